"""Sweeps: a grid (or list) of runs expanded from one file, executed through papermill, resumable.

A sweep file (parameters/sweeps/<name>.yaml):

    kind: sweep                        # optional: what the file is (study.file_kind)
    notebook: pretrain                 # which notebook each run executes
    extends: other_sweep.yaml          # optional: start from another sweep file's keys
    base: ../pretrain/demo.yaml        # a parameter file (relative to this one) or a mapping
    fixed: {eval_every: 200}           # overrides for every run
    grid:                              # the cartesian product of these
      variant: [Atto/7, Pico/7]
      train_examples: [2000, 60000]
    runs: []                           # or/and an explicit list of overrides
    analysis: {repetition: muennighoff}  # optional: scaling-analysis parameters (false: no analysis)
    group: true                        # optional: train runs differing only in lr, weight_decay, seed or
                                       # warmup_steps as one program, up to 8 (or this number) at a time;
                                       # false: every run alone (as `--no-group` does); unset: on an
                                       # accelerator, not on a CPU (no faster than --workers 2 there, benchmarks/)

Each run's folder is outputs/<sweep>/<run id>, the id derived from its resolved parameters, so
re-running a sweep finds its runs again: finished runs are skipped, interrupted ones resume from
their checkpoints, failed ones are tried again (their executed notebook keeps the error).
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import submitit

from vitscale import cluster, config, environ, files, group, loop, notebooks, progress, runs, search, study
from vitscale.report import sweep_index


@dataclasses.dataclass(frozen=True)
class Run:
    run_id: str
    params: dict[str, Any]  # resolved (every field), as params.yaml holds them


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    notebook: str
    runs: tuple[Run, ...]
    analysis: bool = True
    analysis_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # `analysis:` as a mapping
    slurm: config.SlurmResources = config.SlurmResources()  # what each run asks a cluster for
    search: dict[str, list] = dataclasses.field(default_factory=dict)  # key -> values each point is run at
    keys: tuple[str, ...] = ()  # the swept and searched keys that label run ids
    group: int | None = None  # at most this many runs per program (vitscale.group); 0: alone; None: group.default_size


def run_id(params: dict[str, Any], keys: list[str]) -> str:
    """A stable id: the swept values (readable) and a hash of all resolved parameters."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    scalars = [params[k] for k in keys if k in params and isinstance(params[k], (str, int, float, bool))]
    label = "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", str(v)) for v in scalars)  # lists and dicts: in the hash
    return f"{label}_{digest}" if label else digest


def _read_spec(path: Path) -> tuple[dict[str, Any], config.SlurmResources, str]:
    """A sweep file with the one it `extends` merged in, its keys and SLURM resources checked:
    (spec, slurm, notebook kind)."""
    _, spec = study.file_kind(path, config.load_yaml(path, "a sweep file (parameters/sweeps/<name>.yaml)"), "sweep")
    if "extends" in spec:  # another sweep file whose keys this one overrides (e.g. a smaller grid)
        parent_path = path.parent / spec.pop("extends")
        parent = config.load_yaml(parent_path, f"the sweep file {path.name} extends")
        _, parent = study.file_kind(parent_path, parent, "sweep")
        if isinstance(parent.get("base"), str):  # keep the parent's relative base path meaning the same file
            parent["base"] = str((parent_path.parent / parent["base"]).resolve())
        spec = {**parent, **spec}
    unknown = set(spec) - {"name", "notebook", "base", "fixed", "grid", "search", "runs", "analysis", "slurm", "group"}
    if unknown:
        accepted = "name, notebook, base, fixed, grid, search, runs, analysis, slurm, group"
        raise config.ConfigError(
            [config.Problem(k, f"unknown sweep key; accepted: {accepted}") for k in sorted(unknown)], path
        )
    try:
        slurm = config.validate(config.SlurmResources, spec.get("slurm") or {})
    except config.ConfigError as e:
        raise config.ConfigError([config.Problem(f"slurm.{p.field}", p.message) for p in e.problems], path) from None
    _check_analysis(spec.get("analysis", True), path)
    notebook = spec.get("notebook", "pretrain")
    if notebook not in config.RUN_KINDS:
        problem = config.Problem(
            "notebook", f"{notebook!r} is not a notebook kind (accepted: {list(config.RUN_KINDS)})"
        )
        raise config.ConfigError([problem], path)
    if "group" in spec:
        spec["group"] = group_size(spec["group"], notebook, path)
    return spec, slurm, notebook


def _check_analysis(value: Any, path: Path) -> None:
    """`analysis:` is true, false, or a mapping of scaling-analysis parameters (config.ScalingConfig)."""
    if isinstance(value, bool):
        return
    if not isinstance(value, dict) or "sweep_dir" in value:
        accepted = ", ".join(k for k in config.ScalingConfig.model_fields if k != "sweep_dir")
        problem = config.Problem("analysis", f"must be true, false or a mapping of {accepted}")
        raise config.ConfigError([problem], path)
    try:
        config.validate(config.ScalingConfig, {**value, "sweep_dir": "."})
    except config.ConfigError as e:
        raise config.ConfigError([config.Problem(f"analysis.{p.field}", p.message) for p in e.problems], path) from None


def group_size(value: Any, notebook: str, path: Path | None = None) -> int:
    """The sweep file's `group:` as the most runs per program: true -> group.DEFAULT_SIZE, false -> 0
    (every run alone), or a number of copies >= 2; only pretraining runs are grouped."""
    accepted = (
        f"accepted: true (up to {group.DEFAULT_SIZE} runs per program), false (every run alone), or a number >= 2"
    )
    if isinstance(value, bool):
        size = group.DEFAULT_SIZE if value else 0
    elif isinstance(value, int) and value >= 2:
        size = value
    else:
        raise config.ConfigError(
            [config.Problem("group", f"{config.excerpt(value)} is not accepted; {accepted}")], path
        )
    if size and notebook != "pretrain":
        problem = config.Problem("group", f"groups pretraining runs only, not {notebook!r} runs; set group: false")
        raise config.ConfigError([problem], path)
    return size


def load(path: str | Path) -> Sweep:
    """Expand and validate a sweep file; every run is checked before anything runs."""
    path = Path(path)
    spec, slurm, notebook = _read_spec(path)
    base = spec.get("base") or {}
    if isinstance(base, str):
        base_path = path.parent / base
        base = config.load_yaml(base_path, f"the parameter file {path.name} names as its base")
        _, base = study.file_kind(base_path, base, notebook)
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise config.ConfigError([config.Problem("grid", "must map parameter names to non-empty lists")], path)
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    combos += list(spec.get("runs") or [])
    if not combos:
        combos = [{}]
    search = _search_of(spec, path, notebook, set(grid))
    combos = [{**c, **dict(zip(search, values))} for c in combos for values in itertools.product(*search.values())]
    keys = list(grid) + list(search) + sorted({k for c in spec.get("runs") or [] for k in c} - set(grid) - set(search))
    expanded, errors = [], []
    for i, overrides in enumerate(combos):
        params = {**base, **(spec.get("fixed") or {}), **overrides}
        try:
            cfg = notebooks.check(notebook, params)
        except config.ConfigError as e:
            errors += [config.Problem(f"run {i} {config.excerpt(overrides)}: {p.field}", p.message) for p in e.problems]
            continue
        resolved = cfg.model_dump(mode="json")
        # Labelled by the run's own swept keys: adding explicit runs to a grid keeps the grid's ids
        # (and so its finished runs).
        rid = run_id(resolved, [k for k in keys if k in overrides])
        expanded.append(Run(rid, {**resolved, "name": rid}))
    if search and not errors and any(not r.params.get("val_examples") for r in expanded):
        errors.append(config.Problem("search", "chooses each point's best run on held-out images: set val_examples"))
    if errors:
        raise config.ConfigError(errors, path)
    ids = [r.run_id for r in expanded]
    if len(set(ids)) != len(ids):
        same = sorted({i for i in ids if ids.count(i) > 1})
        raise config.ConfigError([config.Problem("grid", f"some runs are identical after resolving: {same}")], path)
    return Sweep(
        spec.get("name", path.stem),
        notebook,
        tuple(sorted(expanded, key=lambda r: r.run_id)),
        spec.get("analysis", True) is not False,
        dict(spec["analysis"]) if isinstance(spec.get("analysis"), dict) else {},
        slurm,
        search,
        tuple(keys),
        spec.get("group"),
    )


def _search_of(spec: dict, path: Path, notebook: str, grid_keys: set[str]) -> dict[str, list]:
    """The `search:` block: parameter names of the notebook's schema mapped to non-empty lists of values."""
    search = spec.get("search") or {}
    if not isinstance(search, dict):
        raise config.ConfigError([config.Problem("search", "must map parameter names to lists of values")], path)
    fields = config.KINDS[notebook].model_fields
    problems = []
    for key, values in search.items():
        if key not in fields or key == "name":
            problems.append(config.Problem(f"search.{key}", f"is not a parameter of {notebook} (e.g. lr, batch_size)"))
        elif not isinstance(values, list) or not values:
            problems.append(config.Problem(f"search.{key}", "must list at least one value"))
        elif len(set(map(str, values))) != len(values):
            problems.append(config.Problem(f"search.{key}", f"repeats a value: {values}"))
        elif key in grid_keys:
            problems.append(
                config.Problem(f"search.{key}", "is also a grid key: a value is searched or swept, not both")
            )
    if problems:
        raise config.ConfigError(problems, path)
    return search


# ----------------------------------------------------------------------------- a search that widens
def with_extras(spec: Sweep, out: Path) -> Sweep:
    """`spec` plus the runs `--extend-search` added to its folder before (search.json's "extra")."""
    extra = _saved_extras(out)
    have = {r.run_id for r in spec.runs}
    new = [Run(rid, params) for rid, params in extra.items() if rid not in have]
    return dataclasses.replace(spec, runs=tuple(sorted((*spec.runs, *new), key=lambda r: r.run_id))) if new else spec


def _saved_extras(out: Path) -> dict[str, dict[str, Any]]:
    path = out / search.SEARCH_FILE
    return runs.read_json(path).get("extra", {}) if path.is_file() else {}


def extend_search(spec: Sweep, out: Path) -> tuple[Sweep, list[str]]:
    """For each point whose best value sits at an edge of what it tried, one run at the next value
    beyond that edge (search.next_value); saved in the folder so later sweeps and analyses keep them.
    Returns the widened sweep and a line per added run."""
    by_id = {r.run_id: r for r in spec.runs}
    rows = [
        r for r in [*runs.collect(out), *runs.diverged_rows(out)] if r.get("branch") is None and r["run_id"] in by_id
    ]
    best, choices = search.choose(rows, list(spec.search))
    winners = {(b["point"], b.get("branch")): b for b in best}
    extra, lines = _saved_extras(out), []
    for c in choices:
        for key, edge in c.at_edge.items():
            if edge is None or (c.point, c.branch) not in winners:
                continue
            value = search.next_value([v for v, _ in c.tried[key]], edge)
            params = {**by_id[winners[(c.point, c.branch)]["run_id"]].params, key: value}
            resolved = notebooks.check(spec.notebook, {k: v for k, v in params.items() if k != "name"})
            resolved = resolved.model_dump(mode="json")
            rid = run_id(resolved, [k for k in spec.keys if k in resolved])
            if rid not in by_id and rid not in extra:
                extra[rid] = {**resolved, "name": rid}
                lines.append(f"{c.label['variant']} ({c.point}): {key} {edge} edge -> {value} ({rid})")
    runs.write_json(out / search.SEARCH_FILE, {"keys": list(spec.search), "extra": extra})
    return with_extras(spec, out), lines


def parse_shard(text: str | None) -> tuple[int, int]:
    """A shard string to numbers: "i/N" → (i, N) with 0 <= i < N."""
    if not text:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise config.ConfigError([config.Problem("--shard", f"{text!r} must be i/N with 0 <= i < N, e.g. 0/4")])
    return int(m.group(1)), int(m.group(2))


def record_search(spec: Sweep, out: Path) -> None:
    """search.json in the sweep folder: the searched keys (what the analysis groups runs by) and any extra runs;
    and the analysis parameters the file sets."""
    notebooks.save_analysis_params(out, spec.analysis_params)
    if spec.search:
        runs.write_json(out / search.SEARCH_FILE, {"keys": list(spec.search), "extra": _saved_extras(out)})


def shard_of(sweep: Sweep, shard: tuple[int, int]) -> list[Run]:
    """The runs shard (i, N) takes: every N-th run of the sorted list, starting at i."""
    return [r for k, r in enumerate(sweep.runs) if k % shard[1] == shard[0]]


def statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every run folder of a sweep folder: its status and, for a scheduled run, the job that ran it
    and the scheduler's state of that job."""
    out = []
    for folder in sorted(p.parent for p in sweep_dir.glob("*/params.yaml")):
        record = runs.Status.read(folder)
        state = runs.status_of(folder)
        reason = record.reason if record and state in ("interrupted", "diverged") else None  # "preempted at step N"
        row = {"run": folder.name, "status": state, "job": record and record.job, "reason": reason}
        if row["job"]:
            launcher = (record and record.launcher) or "local"
            row["scheduler"] = cluster.job_state(sweep_dir / ".submitit", launcher, row["job"])
        out.append(row)
    return out


INDEX_LOCK = ".index.lock"


def write_index(out: Path, sweep: Sweep) -> dict[str, str]:
    """outputs/<sweep>/index.json: every run's status, recomputed from the run folders. Shards of one
    sweep (processes, hosts sharing the folder) write it in turn, under a lock held only while one
    reads the folders and replaces the file: the last write reflects every shard's runs, never a
    status read before another shard's newer one was written."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / INDEX_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or when this process dies
        index = {r.run_id: runs.status_of(out / r.run_id) for r in sweep.runs}
        record = {"sweep": sweep.name, "notebook": sweep.notebook, "runs": index, "updated": time.time()}
        runs.write_json(out / "index.json", record)
        files.atomic_write_text(out / "index.html", sweep_index.index_html(out, sweep, index))
    return index


def thread_env(workers: int) -> dict[str, str]:
    """Threads per worker so that parallel runs do not fight over the cores."""
    per = max(1, (os.cpu_count() or 1) // max(1, workers))
    env = {"OMP_NUM_THREADS": str(per), "TF_NUM_INTRAOP_THREADS": str(per), "TF_NUM_INTEROP_THREADS": "1"}
    if workers > 1 and per == 1:
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


def _execute_one(sweep: Sweep, run: Run, out: Path) -> str:
    folder = out / run.run_id
    if notebooks.STOP.is_set():  # a stop signal came: start nothing new
        return runs.status_of(folder)
    try:
        with runs.writer(folder):
            return _execute_locked(sweep, run, folder)
    except runs.RunBusy as e:
        print(f"skipped: {e}")
        return "running"


def _execute_locked(sweep: Sweep, run: Run, folder: Path) -> str:
    runs.claim(folder, config.validate(config.KINDS[sweep.notebook], run.params))
    runs.Status.running().write(folder)
    try:
        notebooks.execute(sweep.notebook, run.params, folder, quiet=True, checked=True)  # load checked
    except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep goes on
        if reason := notebooks.preempted_step(e):
            runs.Status.interrupted(reason).write(folder)
            return "interrupted"
        if reason := notebooks.diverged_reason(e):
            print(f"diverged: {run.run_id}: {reason}")
            runs.Status.diverged(reason).write(folder)
            return "diverged"
        if line := notebooks.write_failure(e):
            print(f"error: {line}")
        runs.Status.failed(e).write(folder)
        return "failed"
    runs.Status.done().write(folder)
    return "done"


def train_groups(sweep: Sweep, todo: list[Run], out: Path) -> None:
    """The main runs of each group among `todo` (vitscale.group.plan, at most sweep.group per
    program) trained as one program in this process, one group after another, before the runs'
    notebooks: each notebook then finds its main run finished (or resumes what the group left)."""
    size = group.default_size() if sweep.group is None else sweep.group
    if size < 2 or sweep.notebook != "pretrain":
        return
    cfgs = {r.run_id: config.validate(config.PretrainConfig, r.params) for r in todo}
    for ids in group.plan(cfgs, size):
        if notebooks.STOP.is_set():
            return
        with contextlib.ExitStack() as held:
            members = [m for rid in ids if (m := _join(held, cfgs[rid], out / rid)) is not None]
            if len(members) >= 2:
                _train_group(members)


def _join(held: contextlib.ExitStack, cfg: config.PretrainConfig, folder: Path) -> group.Member | None:
    """`folder` locked (held until the group ends), claimed and marked running; None when another
    process writes it or it holds another run (its own execution then says so)."""
    try:
        held.enter_context(runs.writer(folder))
        runs.claim(folder, cfg)
    except (runs.RunBusy, config.ConfigError):
        return None
    runs.Status.running().write(folder)
    return group.Member(cfg, folder)


def _train_group(members: list[group.Member]) -> None:
    names = ", ".join(m.out.name for m in members)
    print(f"group of {len(members)} (one program): {names}")
    try:
        group.train(members)
    except KeyboardInterrupt as e:  # loop.Preempted (every copy saved), or a signal before the first step
        notebooks.STOP.set()
        reason = str(e) if isinstance(e, loop.Preempted) else "stopped before the group's first step"
        for m in members:
            runs.Status.interrupted(reason).write(m.out)
    except Exception as e:  # noqa: BLE001 - the runs then train alone, where a real problem shows again
        print(f"note: the group ({names}) stopped ({type(e).__name__}: {str(e)[:300]}); its runs train alone")


def execute(
    sweep: Sweep,
    out: Path,
    *,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = True,
    grouped: bool = True,
) -> dict[str, str]:
    """Run this shard's unfinished runs, `workers` at a time (threads, each with its own kernel);
    `grouped`: the main runs of each group among them first, as one program each (train_groups)."""
    out.mkdir(parents=True, exist_ok=True)
    record_search(sweep, out)
    mine = shard_of(sweep, shard)
    skip = {"done", "running", "diverged"} | (set() if retry_failed else {"failed"})  # running: another process
    todo = [r for r in mine if runs.status_of(out / r.run_id) not in skip]
    print(
        f"sweep {sweep.name}: {len(sweep.runs)} runs, shard {shard[0]}/{shard[1]} has {len(mine)}, "
        f"{len(mine) - len(todo)} already done, {len(todo)} to run with {workers} worker(s)"
    )
    if grouped:
        train_groups(sweep, todo, out)
    results = {}
    with (
        environ.scoped(thread_env(workers)),  # for this sweep's kernels only, not the rest of the process
        progress.bar(
            total=len(mine), initial=len(mine) - len(todo), desc=sweep.name, unit="run", mininterval=0
        ) as pbar,
        futures.ThreadPoolExecutor(max_workers=workers) as pool,
        notebooks.forwarding_signals(),
    ):
        jobs = {pool.submit(_execute_one, sweep, r, out): r for r in todo}
        for job in futures.as_completed(jobs):
            r = jobs[job]
            results[r.run_id] = job.result()
            write_index(out, sweep)
            pbar.set_postfix(last=f"{r.run_id}:{results[r.run_id]}", refresh=False)
            pbar.update(1)
    return write_index(out, sweep)


# ----------------------------------------------------------------------------- on a cluster
def submit(
    sweep: Sweep,
    out: Path,
    *,
    launcher: str,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = True,
    wait: bool = False,
) -> dict[str, str]:
    """Submit this shard's unfinished runs, one job each (`run_job`, through cluster.executor, with the
    sweep file's `slurm:` resources); with `wait`, block until they end. Run ids, idempotence and the
    index are the local runner's: a run that is done is never resubmitted; one whose job still lives
    (pending or running) is left alone; one whose job is gone is resubmitted and resumes."""
    out.mkdir(parents=True, exist_ok=True)
    record_search(sweep, out)
    jobs_dir = out / ".submitit"
    ex = cluster.executor(jobs_dir, launcher, sweep.slurm)
    jobs = []
    for r in shard_of(sweep, shard):
        folder = out / r.run_id
        status = runs.status_of(folder)
        if status in ("done", "running", "diverged") or (status == "failed" and not retry_failed):
            continue
        record = runs.Status.read(folder)
        alive = cluster.job_state(jobs_dir, launcher, record and record.job) in cluster.ALIVE
        if status in ("submitted", "interrupted") and alive:
            continue
        runs.claim(folder, config.validate(config.KINDS[sweep.notebook], r.params))
        job = ex.submit(run_job, sweep.notebook, r.params, str(folder))
        runs.Status.submitted_as(job.job_id, launcher).write(folder)
        jobs.append(job)
        print(f"{r.run_id}: submitted job {job.job_id} ({launcher})")
    write_index(out, sweep)
    if wait:
        for job in jobs:
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - the job died (killed, out of time): its run resumes on rerun
                print(f"job {job.job_id} ended without a result: {type(e).__name__}: {str(e)[:300]}")
            write_index(out, sweep)
    return write_index(out, sweep)


def run_job(kind: str, params: dict[str, Any], folder: str) -> str:
    """What one submitted job runs. Process 0 executes the notebook into the run folder (the report);
    the other processes of a multi-node run call the program directly and join the same JAX job."""
    folder_path = Path(folder)
    env = submitit.JobEnvironment()
    if env.global_rank != 0:
        notebooks.PROGRAMS[kind].run(config.validate(config.KINDS[kind], params), folder_path)
        return "done"
    try:
        with runs.writer(folder_path), notebooks.forwarding_signals():
            return _run_job_locked(kind, params, folder_path, env)
    except runs.RunBusy as e:
        print(f"error: {e}")
        return "failed"


def _run_job_locked(kind: str, params: dict[str, Any], folder_path: Path, env: submitit.JobEnvironment) -> str:
    runs.Status.running(job=env.job_id, host=env.hostname).write(folder_path)
    try:
        notebooks.execute(kind, params, folder_path, quiet=True)
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, as by the local runner
        if reason := notebooks.preempted_step(e):
            runs.Status.interrupted(reason, job=env.job_id).write(folder_path)
            if os.environ.get("SLURM_JOB_ID"):
                cluster.requeue(os.environ["SLURM_JOB_ID"])
            return "interrupted"
        if reason := notebooks.diverged_reason(e):
            runs.Status.diverged(reason, job=env.job_id).write(folder_path)
            return "diverged"
        runs.Status.failed(e, job=env.job_id).write(folder_path)
        return "failed"
    runs.Status.done(job=env.job_id).write(folder_path)
    return "done"
