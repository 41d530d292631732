"""Headless Chromium for tests that check what a reader sees (reports, the sweep index)."""

import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    return exe


def rendered_dom(html: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with the network off."""
    r = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
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
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
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
