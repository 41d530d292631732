"""JupyterLab as `make lab` starts it (whatever user runs the tests, root included): the vitscale
kernel is found through the server's REST API and runs a cell that imports vitscale."""

import json
import os
import time
import urllib.request
import uuid

import pytest
import websocket

from lab_server import lab

pytestmark = pytest.mark.slow  # starts a Jupyter server


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


def test_lab_serves_the_vitscale_kernel_and_runs_a_cell(tmp_path):
    with lab(tmp_path) as served:
        specs = served.get("/api/kernelspecs")
        assert specs["default"] == "vitscale" and "vitscale" in specs["kernelspecs"]
        assert served.get("/api/contents/pretrain.ipynb?content=0")["type"] == "notebook"  # on notebooks/
        req = urllib.request.Request(
            served.url("/api/kernels"),
            data=json.dumps({"name": "vitscale"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            kernel = json.loads(r.read())
        ws = websocket.create_connection(
            served.url(f"/api/kernels/{kernel['id']}/channels").replace("http://", "ws://"), timeout=120
        )
        try:
            out = execute(
                ws, "import vitscale, vitscale.config as c; print(vitscale.__name__, c.PretrainConfig().variant)"
            )
        finally:
            ws.close()
        assert out.strip() == "vitscale Pico/4"
    if os.geteuid() == 0:
        assert "running as root" in served.log.read_text()
