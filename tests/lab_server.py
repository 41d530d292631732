"""`vitscale lab` (what `make lab` runs) started for a test: a free port, a known token, its output in a
file, Jupyter's per-user state (settings, workspaces, notebook signatures) under the test's folder, and
only its own process group stopped at the end."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Lab:
    base: str  # http://127.0.0.1:PORT
    token: str
    log: Path  # the server's stdout and stderr

    def url(self, path: str) -> str:
        """`path` on the server, with the token."""
        return f"{self.base}{path}{'&' if '?' in path else '?'}token={self.token}"

    def get(self, path: str):
        return get(self.url(path))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


# JupyterLab user settings for tests: no autosave (a test edits notebooks/*.ipynb in the page and must
# not write it back to the repository) and no question about fetching news (offline, and in screenshots).
SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
}


def user_dirs(tmp_path: Path) -> dict[str, str]:
    """Environment that keeps Jupyter's per-user files in `tmp_path`, with the test SETTINGS."""
    settings = tmp_path / "lab-settings"
    for name, values in SETTINGS.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return {
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
    }


@contextlib.contextmanager
def lab(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Lab]:
    """`vitscale lab --port P --no-browser` with JUPYTER_TOKEN set, once it answers its REST API;
    `env` replaces the server's environment (default: this process's)."""
    port, token = free_port(), uuid.uuid4().hex
    env = {**(os.environ if env is None else env), "JUPYTER_TOKEN": token, **user_dirs(tmp_path)}
    cmd = [str(Path(sys.executable).parent / "vitscale"), "lab", "--port", str(port), "--no-browser"]
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    served = Lab(f"http://127.0.0.1:{port}", token, log)
    try:
        for _ in range(240):
            try:
                served.get("/api/status")
                break
            except OSError:
                assert server.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not answer: {log.read_text()[-3000:]}")
        yield served
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=30)
