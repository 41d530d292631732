"""JupyterLab as a person uses it: in a real (headless) browser on the server `vitscale lab` starts, open
notebooks/pretrain.ipynb, type a tiny run into the parameters cell, Run > Run All Cells, stop it with
the toolbar's interrupt button, run all again: it resumes from the step it stopped at, shows its
progress, its figures (drawn from metrics.jsonl) and its summary, and no error."""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from cdp import Page
from lab_server import lab

pytestmark = pytest.mark.long  # a Jupyter server, a browser and two short trainings (80-180 s): make test-long

TOTAL, LOG_EVERY, EVAL_EVERY = 100, 2, 50
PARAMS = """params = dict(name="tiny", dataset="fashion_mnist", train_examples=512, test_split="test[:256]",
    variant="Atto/7", total_steps={total}, batch_size=32, warmup_steps=2, log_every={log}, eval_every={eval},
    eval_batch_size=256)
out_dir = {out!r}
checked = False"""

PROMPTS = "[...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(e => e.innerText.trim())"
# The status bar's kernel item, shown once the notebook is the current widget (clicked into): the page
# is connected to the vitscale kernel and that kernel is idle (the toolbar's execution indicator says
# idle before any kernel is connected, so it cannot tell).
KERNEL_IDLE = (
    "[...document.querySelectorAll('.jp-StatusBar-TextItem')]"
    ".some(e => /^vitscale .*[|] Idle$/.test(e.innerText.trim()))"
)
# Every output of the notebook: [mime type, text].
OUTPUTS = (
    "[...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]"
    ".map(e => [e.getAttribute('data-mime-type') || '', e.innerText])"
)
STDERR = "application/vnd.jupyter.stderr"  # also how JupyterLab shows an error and its traceback
# Every plotly figure in the outputs: its traces (name, x, y), drawn <svg> count and height on screen.
FIGURES = (
    "[...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output .js-plotly-plot, "
    ".jp-Notebook .jp-OutputArea-output.js-plotly-plot')].map(e => ({traces: (e.data || []).map(t => "
    "({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])})), svgs: "
    "e.querySelectorAll('svg.main-svg').length, height: e.getBoundingClientRect().height, "
    "xtitle: ((e.layout || {}).xaxis || {}).title && e.layout.xaxis.title.text}))"
)


def test_pretrain_notebook_in_jupyterlab_runs_and_resumes(tmp_path):
    out = tmp_path / "run"
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "pretrain.ipynb"
    saved = notebook.read_bytes()
    code = [c for c in json.loads(saved)["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "the first code cell is the one to edit"
    env = {k: v for k, v in os.environ.items() if k != "VITSCALE_BATCH"}  # a person's session, not a batch run
    try:
        with lab(tmp_path, env) as served, Page(tmp_path / "chromium") as page:
            try:
                use_the_notebook(page, served.url("/lab/tree/pretrain.ipynb"), len(code), out)
            except Exception as e:
                png = page.screenshot(tmp_path / "failure.png")
                raise AssertionError(
                    f"{e}\n--- screenshot: {png}\n--- the page shows:\n{page.text()[-8000:]}\n"
                    f"--- server log:\n{served.log.read_text()[-3000:]}"
                ) from e
    finally:
        if notebook.read_bytes() != saved:
            notebook.write_bytes(saved)
            pytest.fail(f"the browser session wrote {notebook} (autosave should be off in the test's settings)")


def use_the_notebook(page: Page, url: str, code_cells: int, out: Path) -> None:
    """The whole session: open, set the parameters, run and interrupt, run again, look, photograph."""
    page.navigate(url)
    page.wait_for(f"{PROMPTS}.length === {code_cells}", 120, f"pretrain.ipynb open, its {code_cells} code cells shown")
    set_parameters(page, PARAMS.format(total=TOTAL, log=LOG_EVERY, eval=EVAL_EVERY, out=str(out)))
    page.wait_for(KERNEL_IDLE, 180, "the notebook's vitscale kernel started and idle")

    stopped = run_all_and_interrupt(page, out / "metrics.jsonl")
    before = records(out / "metrics.jsonl")
    assert before and all(r["step"] <= stopped for r in before), (stopped, before)

    run_all(page)
    outputs = page.evaluate(OUTPUTS)
    text = "\n".join(t for _, t in outputs)
    assert not [t for mime, t in outputs if mime == STDERR and "Traceback" in t], text
    assert f"resuming {out} from step {stopped}" in text, text  # stdout of loop.fit: it did not start over
    # tqdm's widget (ipywidgets): its label, the bar, then the counts; at its end. No text fallback.
    assert re.search(rf"tiny:\s*100%\s*{TOTAL}/{TOTAL}\s*\[", text), text
    assert "IProgress not found" not in text, text
    assert "variant: Atto/7" in text and f"total_steps: {TOTAL}" in text  # config.describe: what was typed

    after = records(out / "metrics.jsonl")
    assert after[: len(before)] == before  # the records before the interrupt are kept, not rewritten
    train_steps = [r["step"] for r in after if "train/loss" in r]
    assert train_steps == list(range(LOG_EVERY, TOTAL + 1, LOG_EVERY))  # each logged step once
    assert [r["step"] for r in after if "test/acc" in r] == list(range(EVAL_EVERY, TOTAL + 1, EVAL_EVERY))
    check_figures(page.evaluate(FIGURES), after)
    assert re.search(r"images_seen\s+3,200", text), text  # the summary table: 100 steps of 32

    shoot(page, out.parent / "lab.png")


def set_parameters(page: Page, source: str) -> None:
    """Click into the parameters cell, select all (Ctrl+A) and type `source`, as a person edits it."""
    editor = ".jp-Notebook .jp-CodeCell .cm-content"
    page.click(editor)
    page.wait_for("document.activeElement && document.activeElement.classList.contains('cm-content')", 10, "focus")
    page.key("a", "KeyA", 65, modifiers=2)
    page.type_text(source)
    page.key("Escape", "Escape", 27)  # command mode, as before Run All
    shown = page.evaluate(f"document.querySelector({json.dumps(editor)}).innerText")
    assert shown.strip() == source, shown


def click_run_all(page: Page) -> list[str]:
    """Run > Run All Cells from the menu bar; the prompts before the click."""
    prompts = page.evaluate(PROMPTS)
    page.click(".lm-MenuBar-item", "Run")
    page.wait_for("!!document.querySelector('.lm-Menu-item[data-command=\"runmenu:run-all\"]')", 10, "the Run menu")
    page.click('.lm-Menu-item[data-command="runmenu:run-all"]')
    page.wait_for(f"{PROMPTS}[0] !== {json.dumps(prompts[0])}", 30, "the first cell running")
    return prompts


def wait_done(page: Page, timeout: float = 400) -> list[str]:
    """Wait until the kernel is idle with no cell queued or running ([*]); the prompts then."""
    page.wait_for(f"{KERNEL_IDLE} && !{PROMPTS}.includes('[*]:')", timeout, "every cell run, the kernel idle")
    return page.evaluate(PROMPTS)


def run_all(page: Page) -> None:
    """Run all cells and wait until each has run (a new execution count)."""
    before = click_run_all(page)
    after = wait_done(page)
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in after) and after != before, (before, after)


def run_all_and_interrupt(page: Page, metrics: Path) -> int:
    """Run all, press the toolbar's interrupt button once training has logged a step; the step at
    which the run says it stopped (loop.Preempted: checkpoint saved there)."""
    click_run_all(page)
    deadline = time.time() + 300
    while not records(metrics):
        assert time.time() < deadline, "training logged no step within 300 s"
        assert not page.evaluate(f"{KERNEL_IDLE} && !{PROMPTS}.includes('[*]:')"), "the cells ended before training"
        time.sleep(0.05)
    page.click('.jp-NotebookPanel-toolbar [data-jp-item-name="interrupt"] jp-button')
    wait_done(page)
    text = "\n".join(t for _, t in page.evaluate(OUTPUTS))
    stopped = re.search(r"preempted at step (\d+) \(SIGINT\); checkpoint saved", text)
    assert stopped, f"the interrupt did not stop training at a checkpoint:\n{text}"
    assert 0 < int(stopped[1]) < TOTAL
    return int(stopped[1])


def records(metrics: Path) -> list[dict]:
    """The complete lines of metrics.jsonl (a line being written is left out)."""
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines(keepends=True) if line.endswith("\n")]


def check_figures(figures: list[dict], metrics: list[dict]) -> None:
    """Both training-curve figures are drawn (plotly <svg>s on screen) from the run's own records."""
    curves = [f for f in figures if f["xtitle"] in ("step", "images seen")]
    assert len(curves) == 2, figures
    train = [r for r in metrics if "train/loss" in r]
    for fig, x in zip(curves, ("step", "images_seen"), strict=True):
        assert fig["svgs"] > 0 and fig["height"] > 100, fig
        loss = fig["traces"][0]
        assert loss["x"] == [r[x] for r in train], (x, loss)
        assert loss["y"] == pytest.approx([r["train/loss"] for r in train]), loss


def shoot(page: Page, png: Path) -> None:
    """The executed notebook from its top, the viewport as tall as the notebook, saved to `png` and,
    when VITSCALE_SHOT_DIR is set, copied there as lab.png (for a person to look at)."""
    height = page.evaluate(
        "(() => { const o = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer'); o.scrollTop = 0;"
        " const cells = o.querySelectorAll('.jp-Cell'), last = cells[cells.length - 1].getBoundingClientRect();"
        " return last.bottom - o.getBoundingClientRect().top + innerHeight - o.clientHeight + 60; })()"
    )
    page.send(
        "Emulation.setDeviceMetricsOverride",
        width=1400,
        height=min(round(height), 8000),
        deviceScaleFactor=1,
        mobile=False,
    )
    page.wait_for(f"{FIGURES}.every(f => f.svgs > 0)", 20, "the figures drawn after resizing")
    time.sleep(1)  # plotly redraws on resize
    page.screenshot(png)
    if shots := os.environ.get("VITSCALE_SHOT_DIR"):
        Path(shots).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(shots) / "lab.png")
