"""`vitscale` command line: argparse over the library's own functions.

  vitscale run parameters/pretrain/demo.yaml     execute notebooks/pretrain.ipynb into outputs/demo/
  vitscale run parameters/transfer/demo.yaml     notebooks/transfer.ipynb into outputs/transfer/demo/
  vitscale sweep parameters/sweeps/cpu_scaling.yaml [--workers N] [--shard i/N] [--launcher slurm]
                                                 every run of a sweep, resumable, then the scaling report
  vitscale status outputs/cpu_scaling            each run's state (and its scheduler job)
  vitscale analyze outputs/cpu_scaling           the scaling report of a sweep folder
  vitscale analyze runs.csv --out DIR            the allocation report of any table of runs (params,
                                                 images_seen or tokens, error or loss[, flops, run, group])
  vitscale plan outputs/cpu_scaling --budget 1e15 [--out plan.yaml] [--unique-data N]
                                                 compute-optimal N and D for a budget, and an IsoFLOP sweep
  vitscale predict outputs/cpu_scaling --runs planned.csv [--out F.csv] [--level 0.9]
                                                 predicted error of planned runs (params, images_seen[,
                                                 unique_images]) with prediction and parameter intervals
  vitscale init DIR                              a study folder: parameters/, notebooks/, README.md, vitscale.toml
  vitscale lab [--ip 0.0.0.0] [--port 8888]      JupyterLab on notebooks/ with the vitscale kernel (as root too)
  vitscale kernel                                register the `vitscale` Jupyter kernel
  vitscale export outputs/demo/run.ipynb         render an executed notebook to HTML
  vitscale export outputs/demo [--format big_vision|vision_transformer] [--out FILE.npz]
                                                 a run's newest checkpoint as a .npz that big_vision and timm read

Runs and sweeps go to the study folder's outputs/ unless --out says otherwise: the study folder is
$VITSCALE_STUDY_DIR, else the nearest folder at or above the working directory holding vitscale.toml or
parameters/, else the working directory. A parameter file's `kind:` (pretrain, transfer, sweep) says
which notebook runs it; without one, its folder does (parameters/<kind>/).

Bad parameters print one `error: <file>: <field>: <problem>` line per problem and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from papermill.exceptions import PapermillExecutionError

from vitscale import cluster, config, export, files, logs, loop, notebooks, plan, runs, study, sweep
from vitscale.report import allocation as allocation_report


def _bad_input(e: config.ConfigError) -> int:
    for line in e.lines():
        print(f"error: {line}", file=sys.stderr)
    return 2


PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal after saving; the same command resumes


def _run_failed(e: BaseException) -> int | None:
    """The exit code and one line for a run that stopped on a signal or a failed write, else None."""
    if step := notebooks.preempted_step(e):
        print(f"{step}", file=sys.stderr)
        return PREEMPTED
    if line := notebooks.write_failure(e):
        print(f"error: {line}", file=sys.stderr)
        return 1
    return None


def cmd_run(args: argparse.Namespace) -> int:
    try:
        out = Path(args.out) if args.out else None
        kind, cfg, out = notebooks.prepare_run(Path(args.params), out, args.notebook, args.replace)
    except config.ConfigError as e:
        return _bad_input(e)
    except runs.RunBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (since := runs.finished_at(out)) is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        print(f"{out}: finished at {when} (its summary.json); nothing to run. report: {out / 'run.html'}")
        return 0
    logs.keep(out / logs.LOG_NAME)
    try:
        notebooks.execute(kind, cfg.model_dump(mode="json"), out, checked=True)  # prepare_run checked
    except (PapermillExecutionError, runs.RunError, files.WriteError, loop.Preempted) as e:
        if (code := _run_failed(e)) is not None:
            return code
        if not isinstance(e, PapermillExecutionError):
            raise
        print(
            f"error: the run failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"see {out / 'run.html'}; run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    print(f"report: {out / 'run.html'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    try:  # the arguments first, then the file: no dataset is prepared for a command that cannot run
        shard = sweep.parse_shard(args.shard)
        if args.workers < 1:
            raise config.ConfigError([config.Problem("--workers", f"must be at least 1 (got {args.workers})")])
        spec = sweep.load(args.sweep)
    except config.ConfigError as e:
        return _bad_input(e)
    out = (Path(args.out) if args.out else study.outputs() / spec.name).resolve()
    logs.keep(out / logs.LOG_NAME)
    spec = sweep.with_extras(spec, out)
    if args.extend_search:
        if not spec.search:
            return _bad_input(config.ConfigError([config.Problem("--extend-search", "the sweep file has no search:")]))
        spec, added = sweep.extend_search(spec, out)
        print(f"search: {len(added)} run(s) added beyond an edge" + "".join(f"\n  {line}" for line in added))
    if args.launcher == "local":
        try:
            index = sweep.execute(
                spec, out, workers=args.workers, shard=shard, retry_failed=not args.no_retry, grouped=not args.no_group
            )
        except (runs.RunError, files.WriteError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if notebooks.STOP.is_set():
            print(f"stopped on a signal; `vitscale sweep {args.sweep}` resumes the interrupted runs", file=sys.stderr)
            return PREEMPTED
    else:
        wait = args.wait or args.launcher == "submitit-local"
        index = sweep.submit(spec, out, launcher=args.launcher, shard=shard, retry_failed=not args.no_retry, wait=wait)
        if not wait:
            print(f"submitted; `vitscale status {out}` shows the runs, `vitscale analyze {out}` the report when done")
            return 0
    failed = sorted(k for k, v in index.items() if v == "failed")
    pending = sorted(k for k, v in index.items() if v not in ("done", "diverged"))  # diverged: final
    print(f"index: {out / 'index.json'}" + (f"; failed: {failed}" if failed else ""))
    if not pending and spec.analysis and not args.no_analysis:
        code = cmd_analyze(argparse.Namespace(sweep_dir=str(out)))
        sweep.write_index(out, spec)  # now with the link to the scaling report
        print(f"sweep report: {out / 'index.html'}")
        return code
    print(f"sweep report: {out / 'index.html'}")
    return 1 if pending and shard[1] == 1 else 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        sweep_dir = config.expect_path(args.sweep_dir, "a sweep folder (outputs/<sweep>)", folder=True).resolve()
    except config.ConfigError as e:
        return _bad_input(e)
    rows = sweep.statuses(sweep_dir)
    width = max((len(r["run"]) for r in rows), default=3)
    for r in rows:
        job = f"job {r['job']} ({r['scheduler']})" if r.get("job") else ""
        reason = f"({r['reason']})" if r.get("reason") else ""
        print(f"{r['run']:<{width}}  {r['status']:<11}  {job}  {reason}".rstrip())
    counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) or "no runs")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    try:
        config.expect_path(args.sweep_dir, "a sweep folder, or a CSV of runs")
    except config.ConfigError as e:
        return _bad_input(e)
    if Path(args.sweep_dir).is_file():
        try:
            out = Path(args.out or Path(args.sweep_dir).with_suffix(""))
            pts = plan.load_points(args.sweep_dir, k=args.k)
            report = allocation_report.write(pts, out, source=args.sweep_dir)
        except config.ConfigError as e:
            return _bad_input(e)
        print(f"allocation report: {report}")
        return 0
    sweep_dir = Path(args.sweep_dir).resolve()
    if not sweep_dir.is_dir():
        return _bad_input(config.ConfigError([config.Problem("sweep_dir", f"{sweep_dir} is not a folder")]))
    logs.keep(sweep_dir / "scaling" / logs.LOG_NAME)
    try:
        print(f"scaling report: {notebooks.analyze(sweep_dir)}")
    except (runs.RunError, files.WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except PapermillExecutionError as e:
        if (code := _run_failed(e)) is not None:
            return code
        print(
            f"error: the analysis failed: {e.ename}: {e.evalue}; see {sweep_dir / 'scaling' / 'report.html'}",
            file=sys.stderr,
        )
        return 1
    return 0


def _law(args: argparse.Namespace) -> plan.LawSpec:
    """The joint law `plan` and `predict` fit: --metric, --k, --repetition."""
    return plan.LawSpec(metric=args.metric, k=args.k, repetition=args.repetition)


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        res = plan.run(args.source, args.budget, out=args.out, law=_law(args), unique_data=args.unique_data)
        if res["sweep_file"] is not None:
            sweep.load(res["sweep_file"])  # the file runs as it is
    except config.ConfigError as e:
        return _bad_input(e)
    print(res["text"])
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        res = plan.predict(args.source, args.runs, out=args.out, level=args.level, law=_law(args))
    except config.ConfigError as e:
        return _bad_input(e)
    bt = res["backtest"]
    if bt["q"] is None:
        print(f"note: no prediction interval: {bt['n_scores']} backtest residual(s) are too few", file=sys.stderr)
    print(f"predictions: {args.out}" if args.out else res["csv"], end="\n" if args.out else "")
    if res["check"] is not None:
        print(plan.loop_text(res["check"], args.level))
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    folder = study.notebooks_dir()
    if not folder.is_dir():
        problem = config.Problem("notebooks", "no such folder; `vitscale init DIR` makes a study folder with them")
        return _bad_input(config.ConfigError([problem], study.root()))
    notebooks.ensure_kernel()
    argv = notebooks.lab_argv(args.ip, args.port, open_browser=not args.no_browser)
    if "--ServerApp.allow_root=True" in argv:
        print("note: running as root, so JupyterLab starts with --allow-root", file=sys.stderr)
    print(f"JupyterLab on {folder} at http://{args.ip}:{args.port}/lab (kernel: {notebooks.KERNEL})")
    sys.stdout.flush()
    # The server replaces this process (no 1 GB parent left waiting); its kernels share the batch
    # runs' compilation cache, so a Run All compiles a model shape once across sessions.
    os.execve(argv[0], argv, {**os.environ, **notebooks.compile_cache_env()})


def cmd_init(args: argparse.Namespace) -> int:
    try:
        written = study.init(args.folder)
    except config.ConfigError as e:
        return _bad_input(e)
    folder = Path(args.folder)
    print(f"made the study folder {folder} ({len(written)} files); next:\n  cd {folder}")
    print("  vitscale run parameters/pretrain/tiny.yaml   # a minute: checks the install\n  vitscale lab")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.target.endswith(".ipynb"):
        try:
            config.expect_path(args.target, "an executed notebook (run.ipynb)", folder=False)
        except config.ConfigError as e:
            return _bad_input(e)
        print(notebooks.export_html(Path(args.target)))
        return 0
    try:
        path = export.run(args.target, args.out, args.format)
    except config.ConfigError as e:
        return _bad_input(e)
    print(f"weights: {path}\nparameters to read them back: {path.with_suffix('.yaml')}")
    return 0


def _add_planning(sub) -> None:
    """The `plan` and `predict` subcommands."""
    p = sub.add_parser("plan", help="compute-optimal model size and data for a budget (and an IsoFLOP sweep)")
    p.add_argument("source", help="a sweep folder, or a CSV of runs")
    p.add_argument("--budget", type=float, required=True, help="training FLOPs to plan for")
    p.add_argument("--out", help="the sweep file to write (a sweep folder only; default <folder>/plan_<budget>.yaml)")
    p.add_argument("--metric", default="test/acc", help="the metric whose error is fitted (default test/acc)")
    p.add_argument("--k", type=float, help="with a CSV without a flops column: C = k N D (default 6)")
    p.add_argument("--unique-data", type=float, help="plan under a fixed dataset of this many unique items")
    p.add_argument("--repetition", default="none", help="repeated data: none (default) or muennighoff")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("predict", help="predicted error of planned runs, with prediction and parameter intervals")
    p.add_argument("source", help="a sweep folder, or a CSV of runs")
    runs_help = "CSV of planned runs (params, images_seen[, unique_images]), or the sweep folder of planned runs "
    p.add_argument(
        "--runs", required=True, help=runs_help + "that have run: their achieved errors beside the predictions"
    )
    p.add_argument("--out", help="the CSV to write (default: print it)")
    p.add_argument("--level", type=float, default=0.9, help="nominal level of both intervals (default 0.9)")
    p.add_argument("--metric", default="test/acc", help="the metric whose error is fitted (default test/acc)")
    p.add_argument("--k", type=float, help="with a CSV without a flops column: C = k N D (default 6)")
    p.add_argument("--repetition", default="none", help="repeated data: none (default) or muennighoff")
    p.set_defaults(fn=cmd_predict)


def _add_study_commands(sub: argparse._SubParsersAction) -> None:
    """`init` and `lab`: making a study folder and opening its notebooks."""
    p = sub.add_parser("init", help="make a study folder: parameters/, notebooks/, README.md, vitscale.toml")
    p.add_argument("folder", help="the folder to make (or fill: no existing file is overwritten)")
    p.set_defaults(fn=cmd_init)
    p = sub.add_parser("lab", help="JupyterLab on the study's notebooks/ with the vitscale kernel (as root too)")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(fn=cmd_lab)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vitscale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="execute one parameter file's notebook into its run folder")
    p.add_argument("params", help="parameters/<kind>/<name>.yaml")
    p.add_argument("--out", help="run folder (default: outputs/<name> in the study folder)")
    p.add_argument("--notebook", choices=config.RUN_KINDS, help="notebook kind (default: its kind:, else its folder)")
    p.add_argument("--replace", action="store_true", help="move an existing run with other parameters aside")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("sweep", help="run every run of a sweep file (resumable), then its scaling analysis")
    p.add_argument("sweep", help="parameters/sweeps/<name>.yaml")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (threads, one kernel each)")
    p.add_argument("--shard", help="i/N: run only every N-th run starting at i (split a sweep over machines)")
    p.add_argument("--extend-search", action="store_true", help="add the next value beyond a best value at an edge")
    p.add_argument("--out", help="sweep folder (default: outputs/<name> in the study folder)")
    p.add_argument("--no-retry", action="store_true", help="leave failed runs failed")
    p.add_argument("--no-analysis", action="store_true", help="skip the scaling analysis at the end")
    p.add_argument(
        "--no-group", action="store_true", help="train every run alone (default: the sweep file's group:; "
        "unset, runs differing only in lr, weight_decay, seed or warmup_steps train as one program on an accelerator)"
    )  # fmt: skip
    p.add_argument(
        "--launcher",
        choices=cluster.LAUNCHERS,
        default="local",
        help="local: threads here (default); slurm: one job per run (the file's slurm: resources); "
        "submitit-local: the same jobs as local processes",
    )
    p.add_argument("--wait", action="store_true", help="with --launcher slurm: block until the jobs end")
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser(
        "status", help="each run of a sweep folder: done, failed, running, interrupted, pending (and its job)"
    )
    p.add_argument("sweep_dir")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("analyze", help="the scaling report of a sweep folder, or the allocation report of a CSV")
    p.add_argument("sweep_dir", help="a sweep folder, or a CSV of runs")
    p.add_argument("--out", help="with a CSV: the report folder (default: the CSV's name without .csv)")
    p.add_argument("--k", type=float, help="with a CSV without a flops column: C = k N D (default 6)")
    p.set_defaults(fn=cmd_analyze)
    _add_planning(sub)
    _add_study_commands(sub)
    p = sub.add_parser("kernel", help="register the vitscale Jupyter kernel")
    p.set_defaults(fn=lambda a: notebooks.ensure_kernel() or 0)
    p = sub.add_parser("export", help="a run's weights as a big_vision .npz, or an executed notebook as HTML")
    p.add_argument("target", help="a pretraining run folder (outputs/<run>), or an executed notebook (.ipynb)")
    p.add_argument("--format", default="big_vision", help="big_vision (default) or vision_transformer")
    p.add_argument("--out", help="the .npz to write (default: <run>/export/<format>_step<N>.npz)")
    p.set_defaults(fn=cmd_export)
    args = parser.parse_args(argv)
    if argv is None and args.command in ("run", "sweep", "analyze", "export", "status"):
        logs.capture()  # the terminal shows vitscale's lines; library logs go to the run's log file
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
