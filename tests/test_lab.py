"""JupyterLab as `make lab` starts it (whatever user runs the tests, root included): the vitscale
kernel is found through the server's REST API and runs a cell that imports vitscale."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import websocket

pytestmark = pytest.mark.slow  # starts a Jupyter server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def execute(ws, code: str, timeout: float = 120) -> str:
    """Run `code` in the kernel over the channels websocket; its stdout (Jupyter messaging v5)."""
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "username": "test",
        "session": uuid.uuid4().hex,
        "msg_type": "execute_request",
        "version": "5.3",
        "date": "",
    }
    ws.send(
        json.dumps(
            {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    out, t0 = [], time.time()
    while time.time() - t0 < timeout:
        m = json.loads(ws.recv())
        if m.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "stream":
            out.append(m["content"]["text"])
        elif m["msg_type"] == "error":
            raise AssertionError("\n".join(m["content"]["traceback"]))
        elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return "".join(out)
    raise AssertionError("no reply from the kernel")


def test_lab_serves_the_vitscale_kernel_and_runs_a_cell(root, tmp_path):
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    cmd = [str(Path(sys.executable).parent / "vitscale"), "lab", "--port", str(port), "--no-browser"]
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                specs = get(f"{base}/api/kernelspecs?token={token}")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer")
        assert specs["default"] == "vitscale" and "vitscale" in specs["kernelspecs"]
        assert get(f"{base}/api/contents/pretrain.ipynb?token={token}&content=0")["type"] == "notebook"  # on notebooks/
        req = urllib.request.Request(
            f"{base}/api/kernels?token={token}",
            data=json.dumps({"name": "vitscale"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            kernel = json.loads(r.read())
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}", timeout=120
        )
        try:
            out = execute(
                ws, "import vitscale, vitscale.config as c; print(vitscale.__name__, c.PretrainConfig().variant)"
            )
        finally:
            ws.close()
        assert out.strip() == "vitscale Pico/4"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    if os.geteuid() == 0:
        assert "running as root" in server.stdout.read()
