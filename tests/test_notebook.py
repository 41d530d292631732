"""The real path end to end: a parameter file → papermill → run folder with a rendered report,
and the report opened in headless Chromium with its figures drawn (offline)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import browser
from browser import rendered_dom, screenshot
from vitscale import allocator, formats

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "tiny"
    # Without this process's preload: the kernel has to get jemalloc by itself.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JAX_PERSISTENT_CACHE") and k not in ("LD_PRELOAD", "MALLOC_CONF")
    }
    env["JAX_COMPILATION_CACHE_DIR"] = str(out.parent / "jax_cache")
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "vitscale"),
            "run",
            str(root / "tests/data/tiny_pretrain.yaml"),
            "--notebook",
            "pretrain",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_pretrain_notebook_through_papermill(tiny_run):
    out = tiny_run
    for name in ("run.ipynb", "run.html", "params.yaml", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_steps"] == 6 and summary["images_seen"] == 6 * 32 and summary["train_examples"] == 512
    assert 0.0 <= summary["final"]["test/acc"] <= 1.0
    assert summary["environment"]["packages"]["jax"] == "0.10.2"
    # The kernel starts through vitscale.allocator: jemalloc wherever the system has it.
    assert summary["environment"]["allocator"] == ("jemalloc" if allocator.find_jemalloc() else "system")
    assert summary["train_flops"] == 3 * summary["forward_flops_per_image"] * 6 * 32
    # Evaluation time is accounted for: a share of the run's wall time (tiny runs are mostly evaluation).
    assert summary["eval_seconds"] > 0 and 0 < summary["eval_share"] < 1
    # The kernel compiled into the persistent cache that later runs of a sweep read.
    assert any((out.parent / "jax_cache").iterdir())
    nb = nbformat.read(out / "run.ipynb", as_version=4)
    assert nb.metadata.papermill.parameters["params"]["name"] == "tiny"
    html = (out / "run.html").read_text()
    assert len(re.findall(r'class="plotly-graph-div"', html)) >= 2  # the curves (the summary is a table)
    assert "tiny step 6/6" in html  # a line per evaluation instead of a progress bar
    assert "train.run(cfg, out_dir, checked=True)" not in html  # code cells are hidden in the report
    # Parameters first, no library chatter (it is in log.txt), a sentence instead of an empty figure.
    text = re.sub(r"<script.*?</script>", "", html, flags=re.S)  # the report's text, not plotly.js
    for chatter in ("W0000", "absl", "IProgress", "ipywidgets", "oneDNN", "Generating splits", "Warning", "it/s]"):
        assert chatter not in text, chatter
    assert html.index("name: tiny") < html.index('class="plotly-graph-div"')
    assert "No few-shot evaluation in this run" in html
    assert (out / "log.txt").is_file()


def test_report_renders_its_plots_offline_in_chromium(tiny_run, tmp_path):
    png = screenshot(tiny_run / "run.html", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000  # a page, not a blank
    dom = rendered_dom(tiny_run / "run.html", tmp_path)
    divs = len(re.findall(r'class="plotly-graph-div[^"]*"', dom))
    drawn = len(re.findall(r'class="main-svg"', dom))
    assert divs >= 2
    # plotly.js draws each figure as SVG layers: every figure div got drawn, without any network.
    assert drawn >= divs, (divs, drawn)
    assert 'class="annotation-text"' in dom  # subplot titles drawn as SVG text by plotly.js


def test_report_reads_in_full_offline(tiny_run, tmp_path):
    """Issue 25: tables are HTML (every cell's text on the page, numbers formatted for reading), the
    resolved parameters are all there (collapsed), and the page asks the network for nothing."""
    page = tiny_run / "run.html"
    source = page.read_text()
    assert browser.remote_tags(source) == []
    assert browser.external_requests(page, tmp_path) == []
    text = browser.visible_text(rendered_dom(page, tmp_path))
    cells = browser.cell_texts(source)
    assert cells and [c for c in cells if c not in text] == []
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert formats.flops(summary["train_flops"]) in text and formats.count(summary["num_params"]) in text
    assert "All parameters" in text
    for group in ("model", "data", "recipe", "evaluation"):
        assert f">{group}</caption>" in source, group
    assert "pool_type" in text and "warmup_steps" in text  # defaults too, not only what the file set
