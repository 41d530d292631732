"""Running notebooks in batch: the kind -> program table, the `vitscale` kernel, papermill
execution with the compilation cache, and HTML export of executed notebooks.

`prepare_run` is every check before any compute (schema, then the program's `check`), then the
claim of the run folder; `execute` runs the package's notebooks/<kind>.ipynb into it (its kernel in
the study's notebooks/, `study.kernel_cwd`) and renders the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from vitscale import analysis, config, environ, files, logs, loop, runs, study, train
from vitscale.transfer import program as transfer_program

KERNEL = "vitscale"
# The program behind each notebook kind: its `check(cfg)` and `run(cfg, out_dir)`.
PROGRAMS: dict[str, ModuleType] = {"pretrain": train, "transfer": transfer_program, "scaling_analysis": analysis}


def check(kind: str, params: dict[str, Any], source: str | Path | None = None, checked: bool = False) -> Any:
    """The validated config of `params` for notebook `kind`, after the program's own checks: the one
    way to check once. `checked` says the checks ran already (a batch kernel whose parent, the CLI or
    the local sweep, checked the same values: `execute(checked=True)`), so only the schema is
    validated; the notebook then runs the program with `run(cfg, out_dir, checked=True)`."""
    if kind not in PROGRAMS:
        raise config.ConfigError([config.Problem("notebook", f"{kind!r} is not one of {sorted(PROGRAMS)}")], source)
    try:
        cfg = config.validate(config.KINDS[kind], params)
        if not checked:
            PROGRAMS[kind].check(cfg)
    except config.ConfigError as e:
        raise e.with_source(source) if source else e from None
    return cfg


# ----------------------------------------------------------------------------- the kernel
def kernel_argv() -> list[str]:
    """The `vitscale` kernel's command: this interpreter's ipykernel, started through
    vitscale.allocator (jemalloc when the system has it)."""
    return [
        sys.executable,
        "-m",
        "vitscale.allocator",
        sys.executable,
        "-Xfrozen_modules=off",
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ]


def ensure_kernel() -> None:
    """Register this interpreter as the `vitscale` kernel (in sys.prefix) unless it already is."""
    from ipykernel.kernelspec import install  # Jupyter's packages load only for batch runs
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().find_kernel_specs().get(KERNEL)
    if spec and json.loads(Path(spec, "kernel.json").read_text()).get("argv") == kernel_argv():
        return
    path = Path(install(kernel_name=KERNEL, display_name="vitscale (Python 3.11)", prefix=sys.prefix))
    spec_json = json.loads((path / "kernel.json").read_text())
    spec_json["argv"] = kernel_argv()
    files.atomic_write_text(path / "kernel.json", json.dumps(spec_json, indent=1))


def lab_argv(
    ip: str = "127.0.0.1", port: int = 8888, open_browser: bool = True, as_root: bool | None = None
) -> list[str]:
    """JupyterLab on the study's notebooks/ with the `vitscale` kernel as the default, at `ip`:`port`; as
    root too (containers and cloud notebook images run as root; JupyterLab refuses it without --allow-root)."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={study.notebooks_dir()}",
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.open_browser={open_browser}",
        f"--MappingKernelManager.default_kernel_name={KERNEL}",
        *(["--ServerApp.allow_root=True"] if as_root else []),
    ]


def compile_cache_env(path: Path | None = None) -> dict[str, str]:
    """JAX's persistent compilation cache at the study's outputs/.jax_cache for the kernels we start, unless
    JAX_COMPILATION_CACHE_DIR is set ("" switches it off): runs sharing a model shape compile once."""
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(path or study.outputs() / ".jax_cache"),
        # JAX caches only programs that took >= 1 s to compile; the evaluation step takes less.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
    }
    return {k: v for k, v in env.items() if k not in os.environ}


# ----------------------------------------------------------------------------- executing and exporting
# nbconvert's lab template with the two <script src> it takes from a CDN (require.js, MathJax) left out:
# the reports use neither (plotly.js is embedded by report.basics.setup_notebook's output, MathJax is off).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
"""


def export_html(notebook: Path, html: Path | None = None) -> Path:
    """Render an executed notebook to a self-contained HTML report (code cells hidden), fully offline:
    no script or style sheet from the network."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    html = html or notebook.with_suffix(".html")
    nb = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"vitscale_offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="vitscale_offline.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    files.atomic_write_text(html, body, "the report")
    return html


STOP = threading.Event()  # set when a stop signal reached this process: start no further runs
_forwarding = 0


def _forward(signum, frame) -> None:
    """Pass a stop signal on to the kernels this process started (where the loop runs: it saves at
    the next step boundary); they run in their own session, so the terminal's and SLURM's signals
    do not reach them otherwise."""
    first = not STOP.is_set()
    STOP.set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            child.send_signal(signum)
    if first:
        name = signal.Signals(signum).name
        print(f"{name}: saving a checkpoint at the next step, then stopping", file=sys.stderr)


@contextlib.contextmanager
def forwarding_signals() -> Iterator[None]:
    """While kernels run: SIGINT, SIGTERM and SIGUSR1 here go to the kernels (from the main thread only)."""
    global _forwarding
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _forward) for s in loop.STOP_SIGNALS} if not _forwarding else {}
    _forwarding += 1
    try:
        yield
    finally:
        _forwarding -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)


def preempted_step(e: BaseException) -> str | None:
    """The reason "preempted at step N (...)" when a kernel's run stopped on a signal, else None."""
    if getattr(e, "ename", None) == "Preempted" or isinstance(e, loop.Preempted):
        return str(getattr(e, "evalue", None) or e)
    return None


def diverged_reason(e: BaseException) -> str | None:
    """The message naming the first non-finite step when a kernel's run diverged (loop.NonFiniteLoss), else None."""
    if getattr(e, "ename", None) == "NonFiniteLoss" or isinstance(e, loop.NonFiniteLoss):
        return str(getattr(e, "evalue", None) or e)
    return None


def write_failure(e: BaseException) -> str | None:
    """The one line of a kernel's failed write (files.WriteError), else None."""
    if getattr(e, "ename", None) == "WriteError":
        return str(e.evalue)
    return str(e) if isinstance(e, files.WriteError) else None


# Kernels started side by side (a sweep's workers) sometimes die before they answer (a known race in
# launching ipykernels in parallel, nteract/papermill#239); no cell has run then, so starting another is safe.
KERNEL_START_TRIES = 3
_KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")


def kernel_did_not_start(e: BaseException) -> bool:
    """Whether `e` is a kernel that never started (jupyter_client's wait for its first reply), not a cell's failure."""
    return isinstance(e, RuntimeError) and str(e).startswith(_KERNEL_START_FAILURES)


def execute(
    kind: str, params: dict[str, Any], out: Path, *, name: str = "run", quiet: bool = False, checked: bool = False
) -> Path:
    """Execute the package's notebooks/<kind>.ipynb with `params` into out/<name>.ipynb, then render
    <name>.html; the kernel runs in the study's notebooks/ and is told the study folder (`study.ENV`).
    Raises papermill's PapermillExecutionError after saving both if a cell failed. `quiet` does not
    stream the kernel's output here (parallel sweep workers); `checked`: this process has checked
    `params` (notebooks.check), so the kernel's first cell validates them only."""
    import papermill as pm

    ensure_kernel()
    home = study.root()
    # Text progress bars; the shared cache; the study this process found, wherever the kernel runs.
    kernel_env = {"VITSCALE_BATCH": "1", study.ENV: str(home), **compile_cache_env()}
    out.mkdir(parents=True, exist_ok=True)
    run_nb = out / f"{name}.ipynb"
    # The kernel's own lines (progress) on the terminal; its stderr (library chatter) in the log file.
    streams = {} if quiet else {"stdout_file": sys.stdout, "stderr_file": logs.stream() or sys.stderr}
    failure = None
    try:
        with forwarding_signals(), environ.scoped(kernel_env), files.writing(run_nb, "the executed notebook"):
            for attempt in range(1, KERNEL_START_TRIES + 1):
                try:
                    pm.execute_notebook(
                        study.notebook(kind),
                        run_nb,
                        parameters={"params": params, "out_dir": str(out), **({"checked": True} if checked else {})},
                        kernel_name=KERNEL,
                        cwd=str(study.kernel_cwd(home)),
                        progress_bar=False,
                        **streams,
                    )
                    break
                except RuntimeError as e:
                    if not kernel_did_not_start(e) or attempt == KERNEL_START_TRIES:
                        raise
                    print(f"{out.name}: the kernel did not start ({e}); starting another", file=sys.stderr)
    except BaseException as e:
        failure = e
        raise
    finally:
        if run_nb.exists():
            try:
                export_html(run_nb)
            except Exception:  # noqa: BLE001 - a torn notebook (disk full) or no room for the report
                if failure is None:
                    raise  # else the notebook's own failure is the one to tell
    return out


def prepare_run(
    params_file: Path, out: Path | None = None, kind: str | None = None, replace: bool = False
) -> tuple[str, Any, Path]:
    """Every check before any compute, then claim (or check) the run folder: (kind, cfg, folder). The
    notebook is `kind` (--notebook), else the file's `kind:`, else its folder (`study.file_kind`)."""
    params = config.load_yaml(params_file, "a parameter file (parameters/<kind>/<name>.yaml)")
    kind, params = study.file_kind(params_file, params, kind)
    if kind not in config.RUN_KINDS:
        how = f"{kind!r} files run with `vitscale sweep {params_file}` (`vitscale run` runs kinds pretrain, transfer)"
        problem = config.Problem("kind", how)
        raise config.ConfigError([problem], params_file)
    cfg = check(kind, params, params_file)
    out = (out or runs.default_out(kind, params_file)).resolve()  # the kernel runs in notebooks/: no relative paths
    runs.lock(out)  # held until this process ends; its kernel writes under it
    try:
        runs.claim(out, cfg, replace=replace)
    except config.ConfigError:
        runs.abandon(out)
        raise
    if not (out / runs.LOCK_NAME).exists():  # --replace moved the old run (and the lock file) aside
        runs.unlock(out)
        runs.lock(out)
    return kind, cfg, out


#: A sweep folder's analysis parameters (its file's `analysis:` mapping), so `vitscale analyze` reuses them.
ANALYSIS_FILE = "analysis.json"


def save_analysis_params(sweep_dir: Path, params: dict[str, Any]) -> None:
    """Record the scaling-analysis parameters a sweep file sets ({}: the schema's defaults)."""
    runs.write_json(sweep_dir / ANALYSIS_FILE, params)


def analyze(sweep_dir: Path, quiet: bool = False) -> Path:
    """Execute notebooks/scaling_analysis.ipynb over a sweep's runs into <sweep>/scaling/report.html, with
    the parameters its sweep file set (ANALYSIS_FILE), the schema's defaults for the rest."""
    out = sweep_dir / "scaling"
    runs.lock(out)
    saved = runs.read_json(sweep_dir / ANALYSIS_FILE) if (sweep_dir / ANALYSIS_FILE).is_file() else {}
    params = config.ScalingConfig(**{**saved, "sweep_dir": str(sweep_dir)}).model_dump(mode="json")
    execute("scaling_analysis", params, out, name="report", quiet=quiet)
    return out / "report.html"
