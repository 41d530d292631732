"""Headless Chromium for tests that check what a reader sees (reports, the sweep index)."""

import html as ihtml
import re
import subprocess
from pathlib import Path

from conftest import system_tool


def chromium() -> str:
    return system_tool("chromium", "chromium-browser", package="chromium")


# Headless, offline, no first-run work: what every page check runs Chromium with.
HEADLESS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def rendered_dom(html: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with the network off."""
    r = subprocess.run(
        [
            chromium(),
            *HEADLESS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def screenshot(html: Path, tmp_path: Path, size: str = "1200,1600") -> Path:
    """A PNG of the page as headless Chromium draws it (network off)."""
    png = tmp_path / f"{html.stem}.png"
    r = subprocess.run(
        [
            chromium(),
            *HEADLESS,
            f"--user-data-dir={tmp_path / 'shot-profile'}",
            "--virtual-time-budget=15000",
            f"--window-size={size}",
            f"--screenshot={png}",
            html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    return png


def external_requests(html: Path, tmp_path: Path) -> list[str]:
    """Every http(s) URL headless Chromium asked for while loading the page (from its net log), with
    background networking off: an offline page asks for none."""
    log = tmp_path / "netlog.json"
    r = subprocess.run(
        [
            chromium(),
            *HEADLESS,
            f"--user-data-dir={tmp_path / 'net-profile'}",
            "--virtual-time-budget=15000",
            f"--log-net-log={log}",
            "--dump-dom",
            html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0 and log.is_file(), r.stderr[-2000:]
    urls = set(re.findall(r'"url":\s*"(https?://[^"]+)"', log.read_text(errors="replace")))
    return sorted(u for u in urls if not BROWSER_OWN.match(u))


# Chromium's own services (updates, accounts, the clock), which it calls whatever page it shows.
BROWSER_OWN = re.compile(r"https?://[^/]*\b(google\.com|googleapis\.com|gvt1\.com)/")


def remote_tags(page: str) -> list[str]:
    """<script> and <link> tags of a page's source that point at http(s)."""
    return re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?https?://[^>]*>", page, flags=re.I)


def cell_texts(page: str) -> list[str]:
    """The text of every table cell (<td>, <th>) of a page's source, tags stripped, whitespace collapsed."""
    cells = re.findall(r"<t[dh]\b[^>]*>(.*?)</t[dh]>", re.sub(r"<script.*?</script>", "", page, flags=re.S), re.S)
    return [" ".join(ihtml.unescape(re.sub(r"<[^>]+>", " ", c)).split()) for c in cells]


def visible_text(dom: str) -> str:
    """A rendered DOM's text, tags stripped and whitespace collapsed (for 'is this shown' checks)."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(ihtml.unescape(re.sub(r"<[^>]+>", " ", body)).split())
