"""A small Chrome DevTools Protocol client: one headless Chromium page that tests drive with real
mouse and keyboard input (Input.*), read with Runtime.evaluate and photograph (Page.captureScreenshot)."""

import base64
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

from browser import HEADLESS, chromium


class PageError(AssertionError):
    """A script evaluated in the page threw, or the page did not reach a state in time."""


class Page:
    """Headless Chromium showing one page, started in its own process group so that only it is killed."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    chromium(),
                    *HEADLESS,
                    "--remote-debugging-port=0",
                    f"--user-data-dir={profile}",
                    f"--window-size={width},{height}",
                    "about:blank",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.ws = websocket.create_connection(_page_socket(profile, self.proc), timeout=60, suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self._id = 0
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params) -> dict:
        """Call a DevTools method and return its result (events that arrive meanwhile are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise PageError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as JSON."""
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise PageError(f"{expression[:200]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll until `expression` is truthy in the page; its value. PageError naming `what` otherwise."""
        deadline, error = time.time() + timeout, None
        while time.time() < deadline:
            try:
                value = self.evaluate(expression)
            except PageError as e:
                value, error = None, e  # the page is still loading
            if value:
                return value
            time.sleep(0.25)
        raise PageError(f"not seen within {timeout:.0f} s: {what}" + (f" (last error: {error})" if error else ""))

    def click(self, selector: str, text: str | None = None) -> None:
        """A real left click (move, press, release) at the centre of the first element matching
        `selector` (and showing exactly `text`, when given)."""
        box = self.evaluate(
            f"(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => {json.dumps(text)} === null || e.innerText.trim() === {json.dumps(text)});"
            " if (!e) return null; e.scrollIntoView({block: 'nearest'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise PageError(f"nothing to click: {selector} {text or ''}")
        x, y = box
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def key(self, key: str, code: str, key_code: int, modifiers: int = 0) -> None:
        """Press and release one key; modifiers as DevTools counts them (2: Ctrl, 8: Shift)."""
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=code,
                windowsVirtualKeyCode=key_code,
                modifiers=modifiers,
            )

    def type_text(self, text: str) -> None:
        """Text into the focused element as typing or pasting would put it there."""
        self.send("Input.insertText", text=text)

    def text(self) -> str:
        """The text the page shows (what a failure message quotes)."""
        try:
            return self.evaluate("document.body ? document.body.innerText : ''") or ""
        except (PageError, OSError, websocket.WebSocketException) as e:
            return f"(page text unavailable: {e})"

    def screenshot(self, png: Path) -> Path:
        """A PNG of the viewport as the page draws it now."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(base64.b64decode(data))
        return png

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=20)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _page_socket(profile: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    """The DevTools websocket of the browser's first page, once Chromium has written its port."""
    port_file, deadline = profile / "DevToolsActivePort", time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise PageError(f"chromium exited with {proc.returncode}: {(profile / 'chromium.log').read_text()[-2000:]}")
        if port_file.is_file() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
            except OSError:
                pages = []
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise PageError(f"chromium did not open its DevTools port within {timeout:.0f} s")
