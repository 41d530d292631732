"""`vitscale` command line: a thin layer over papermill and the library's own functions.

vitscale run parameters/pretrain/demo.yaml     execute notebooks/pretrain.ipynb into outputs/demo/
vitscale run parameters/transfer/demo.yaml     notebooks/transfer.ipynb into outputs/transfer/demo/
vitscale sweep parameters/sweeps/cpu_scaling.yaml [--workers N] [--shard i/N]
                                               every run of a sweep, resumable, then the scaling report
vitscale analyze outputs/cpu_scaling           the scaling report of a sweep folder
vitscale kernel                                register the `vitscale` Jupyter kernel
vitscale export outputs/demo/run.ipynb         render an executed notebook to HTML
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (src layout: lib/vitscale)
NOTEBOOKS = ROOT / "notebooks"
OUTPUTS = ROOT / "outputs"
KERNEL = "vitscale"
KINDS = ("pretrain", "transfer")
ANALYSIS_DEFAULTS = {"metrics": None, "x": "train_flops", "n_bootstrap": 200}


def schema_for(kind: str):
    from vitscale import config

    schemas = {"pretrain": config.PretrainConfig}
    if hasattr(config, "TransferConfig"):
        schemas["transfer"] = config.TransferConfig
    if kind not in schemas:
        raise SystemExit(f"error: notebook kind {kind!r} is not one of {sorted(schemas)}")
    return schemas[kind]


def kernel_argv() -> list[str]:
    """The `vitscale` kernel's command: this interpreter's ipykernel, started through
    vitscale.allocator (jemalloc when the system has it: XLA's per-step buffers then stop
    page-faulting; see that module)."""
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
    """Register this interpreter as the `vitscale` kernel (in sys.prefix) if it is not yet, or if
    the registered one starts another interpreter or not through vitscale.allocator."""
    from jupyter_client.kernelspec import KernelSpecManager

    from vitscale import runs

    spec = KernelSpecManager().find_kernel_specs().get(KERNEL)
    if spec and json.loads(Path(spec, "kernel.json").read_text()).get("argv") == kernel_argv():
        return
    from ipykernel.kernelspec import install

    path = Path(install(kernel_name=KERNEL, display_name="vitscale (Python 3.11)", prefix=sys.prefix))
    spec_json = json.loads((path / "kernel.json").read_text())
    spec_json["argv"] = kernel_argv()
    runs.atomic_write_text(path / "kernel.json", json.dumps(spec_json, indent=1))


def export_html(notebook: Path, html: Path | None = None) -> Path:
    """Render an executed notebook to a self-contained HTML report (code cells hidden)."""
    import nbformat
    from nbconvert import HTMLExporter

    from vitscale import runs

    html = html or notebook.with_suffix(".html")
    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter(
        exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    ).from_notebook_node(nb)
    runs.atomic_write_text(html, body)
    return html


def use_compile_cache(path: Path | None = None) -> None:
    """Point JAX's persistent compilation cache at outputs/.jax_cache for the kernels we start, unless
    JAX_COMPILATION_CACHE_DIR is already set (set it to "" to switch the cache off). Every run is a
    fresh kernel; runs sharing a model shape then compile once (benchmarks/compile_cache.py)."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(path or OUTPUTS / ".jax_cache"))
    # JAX caches only programs that took >= 1 s to compile; the evaluation step takes ~0.7 s here.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def execute(kind: str, params: dict[str, Any], out: Path, *, name: str = "run", quiet: bool = False) -> Path:
    """Execute notebooks/<kind>.ipynb with `params` into out/<name>.ipynb, then render <name>.html.
    Raises papermill's PapermillExecutionError after saving both if a cell failed. `quiet` does not
    stream the kernel's output here (parallel sweep workers)."""
    import papermill as pm

    ensure_kernel()
    os.environ["VITSCALE_BATCH"] = "1"  # the kernel inherits it: text progress bars
    use_compile_cache()
    out.mkdir(parents=True, exist_ok=True)
    run_nb = out / f"{name}.ipynb"
    streams = {} if quiet else {"stdout_file": sys.stdout, "stderr_file": sys.stderr}
    try:
        pm.execute_notebook(
            NOTEBOOKS / f"{kind}.ipynb",
            run_nb,
            parameters={"params": params, "out_dir": str(out)},
            kernel_name=KERNEL,
            cwd=str(NOTEBOOKS),
            progress_bar=False,
            **streams,
        )
    finally:
        if run_nb.exists():
            export_html(run_nb)
    return out


def prepare_run(params_file: Path, out: Path | None, kind: str | None, replace: bool) -> tuple[str, Any, Path]:
    """Validate everything before any compute; claim or check the run folder."""
    from vitscale import config, runs

    kind = kind or params_file.parent.name
    if kind not in KINDS:
        raise config.ConfigError(
            f"cannot tell the notebook for {params_file}: put it under parameters/<kind>/ "
            f"or pass --notebook, with kind one of {list(KINDS)}"
        )
    cfg = config.validate(schema_for(kind), config.load_yaml(params_file))
    import jax

    cfg.check_devices(jax.device_count(), 1)
    default = OUTPUTS / params_file.stem if kind == "pretrain" else OUTPUTS / kind / params_file.stem
    out = (
        out or default
    ).resolve()  # the kernel runs in notebooks/: no relative paths  # the kernel runs in notebooks/: no relative paths
    existing = out / "params.yaml"
    if existing.exists():
        same = config.resolved(type(cfg), config.load_yaml(existing)) == cfg.model_dump(mode="json")
        if not same and not replace:
            raise config.ConfigError(
                f"{out} already holds a run with other parameters; nothing was changed. Pass --replace to move it "
                f"aside (to {OUTPUTS / '.replaced'}) and start over, or --out to write elsewhere"
            )
        if not same:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            dest = OUTPUTS / ".replaced" / f"{out.name}-{stamp}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out), dest)
            print(f"moved the previous run to {dest}")
    elif out.exists() and any(out.iterdir()) and not replace:
        raise config.ConfigError(f"{out} exists and is not a run folder; choose another --out")
    if not existing.exists():
        runs.atomic_write_text(existing, config.dump(cfg))
    return kind, cfg, out


def cmd_run(args: argparse.Namespace) -> int:
    from vitscale import config

    try:
        kind, cfg, out = prepare_run(
            Path(args.params), Path(args.out) if args.out else None, args.notebook, args.replace
        )
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import papermill as pm

    try:
        execute(kind, cfg.model_dump(mode="json"), out)
    except pm.PapermillExecutionError as e:
        print(
            f"error: the run failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"see {out / 'run.html'}; run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    print(f"report: {out / 'run.html'}")
    return 0


def analyze(sweep_dir: Path, quiet: bool = False) -> Path:
    """Execute notebooks/scaling_analysis.ipynb over a sweep's runs into <sweep>/scaling/report.html."""
    out = sweep_dir / "scaling"
    execute("scaling_analysis", {"sweep_dir": str(sweep_dir), **ANALYSIS_DEFAULTS}, out, name="report", quiet=quiet)
    return out / "report.html"


def cmd_sweep(args: argparse.Namespace) -> int:
    from vitscale import config, sweep

    try:
        spec = sweep.load(args.sweep)
        shard = sweep.parse_shard(args.shard)
        if args.workers < 1:
            raise config.ConfigError(f"--workers {args.workers} must be at least 1")
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = (Path(args.out) if args.out else OUTPUTS / spec.name).resolve()
    index = sweep.execute(spec, out, workers=args.workers, shard=shard, retry_failed=not args.no_retry)
    failed = sorted(k for k, v in index.items() if v == "failed")
    pending = sorted(k for k, v in index.items() if v != "done")
    print(f"index: {out / 'index.json'}" + (f"; failed: {failed}" if failed else ""))
    if not pending and spec.analysis and not args.no_analysis:
        import papermill as pm

        try:
            print(f"scaling report: {analyze(out)}")
        except pm.PapermillExecutionError as e:
            print(
                f"error: the analysis failed: {e.ename}: {e.evalue}; see {out / 'scaling' / 'report.html'}",
                file=sys.stderr,
            )
            return 1
    elif pending and shard[1] == 1:
        return 1
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import papermill as pm

    sweep_dir = Path(args.sweep_dir).resolve()
    if not sweep_dir.is_dir():
        print(f"error: {sweep_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        print(f"scaling report: {analyze(sweep_dir)}")
    except pm.PapermillExecutionError as e:
        print(f"error: the analysis failed: {e.ename}: {e.evalue}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vitscale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="execute one parameter file's notebook into its run folder")
    p.add_argument("params", help="parameters/<kind>/<name>.yaml")
    p.add_argument("--out", help="run folder (default: outputs/<name>)")
    p.add_argument("--notebook", choices=KINDS, help="notebook kind (default: the parameter file's folder)")
    p.add_argument("--replace", action="store_true", help="move an existing run with other parameters aside")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("sweep", help="run every run of a sweep file (resumable), then its scaling analysis")
    p.add_argument("sweep", help="parameters/sweeps/<name>.yaml")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (threads, one kernel each)")
    p.add_argument("--shard", help="i/N: run only every N-th run starting at i (split a sweep over machines)")
    p.add_argument("--out", help="sweep folder (default: outputs/<name>)")
    p.add_argument("--no-retry", action="store_true", help="leave failed runs failed")
    p.add_argument("--no-analysis", action="store_true", help="skip the scaling analysis at the end")
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("analyze", help="execute the scaling-analysis notebook over a sweep folder")
    p.add_argument("sweep_dir")
    p.set_defaults(fn=cmd_analyze)
    p = sub.add_parser("kernel", help="register the vitscale Jupyter kernel")
    p.set_defaults(fn=lambda a: ensure_kernel() or 0)
    p = sub.add_parser("export", help="render an executed notebook to HTML")
    p.add_argument("notebook")
    p.set_defaults(fn=lambda a: print(export_html(Path(a.notebook))) or 0)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
