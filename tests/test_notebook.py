"""The real path end to end: a parameter file → papermill → run folder with a rendered report."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest


@pytest.mark.slow
def test_pretrain_notebook_through_papermill(root, tmp_path):
    out = tmp_path / "tiny"
    r = subprocess.run([str(Path(sys.executable).parent / "vitscale"), "run", str(root / "tests/data/tiny_pretrain.yaml"),
                        "--notebook", "pretrain", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("run.ipynb", "run.html", "params.yaml", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_steps"] == 6 and summary["images_seen"] == 6 * 32
    assert 0.0 <= summary["final"]["test/acc"] <= 1.0
    assert summary["environment"]["packages"]["jax"] == "0.10.2"
    assert summary["train_flops"] == 3 * summary["forward_flops_per_image"] * 6 * 32
    nb = nbformat.read(out / "run.ipynb", as_version=4)
    assert nb.metadata.papermill.parameters["params"]["name"] == "tiny"
    html = (out / "run.html").read_text()
    # plotly.js is embedded (offline), figures are drawn as plotly divs, the progress log is text.
    assert "plotly.js v" in html or "Plotly=" in html or "window.Plotly" in html
    assert len(re.findall(r'class="plotly-graph-div"', html)) >= 3
    assert "6/6" in html
    # Nothing of the notebook's code cells is shown in the report.
    assert "train.run(cfg, out_dir)" not in html
