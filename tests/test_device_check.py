"""benchmarks/device_check.py --dry-run on this CPU, in a fresh process, so the script cannot rot: it
runs every case, imports no TensorFlow, and each row's MFU is images/s x 3 x models/flops.py's forward
FLOPs / (devices x peak); a group of models (8; 2 in the dry run) is timed against the same runs one after another."""

import json
import os
import subprocess
import sys

import pytest

from vitscale import config
from vitscale.models import flops, vit


def test_device_check_dry_run(root, tmp_path):
    out = tmp_path / "device_check.json"
    env = {**os.environ, "PYTHONPATH": str(root / "lib"), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(root / "benchmarks" / "device_check.py"), "--dry-run", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["tensorflow_imported"] is False and report["dry_run"] is True
    rows = report["rows"]
    assert [r["case"].split(" ")[0] for r in rows] == ["B/16", "L/16", "demo"]
    for r in rows:
        assert r["attention"] == "xla-cpu" and r["devices"] == 1
        assert r["images_per_s"] == pytest.approx(r["steps"] * r["batch"] / r["seconds"], rel=1e-9)
        mfu = r["images_per_s"] * 3 * r["forward_flops_per_image"] / (r["devices"] * r["peak_flops_per_s"])
        assert r["mfu"] == pytest.approx(mfu, rel=1e-9) and 0 < r["mfu"]
    assert [r["dtype"] for r in rows[:2]] == ["bfloat16", "bfloat16"]
    # The demo row is the demo's model (cut to one block): models/flops.py's count of it from demo.yaml.
    demo = config.load_yaml(root / "parameters" / "pretrain" / "demo.yaml")
    model = vit.make_model(demo["variant"], 10).clone(depth=1)
    assert rows[2]["forward_flops_per_image"] == flops.forward_flops(model, (28, 28, 1))
    assert "| demo" in result.stdout  # the printed table
    # A group of tiny models as one program against one after another (vitscale.stacked; 2 in the dry run).
    (g,) = report["groups"]
    assert g["copies"] == 2 and g["ratio"] == pytest.approx(g["group_images_per_s"] / g["alone_images_per_s"])
    assert g["group_mfu"] == pytest.approx(2 * g["group_mfu_per_copy"]) and g["alone_mfu"] > 0
