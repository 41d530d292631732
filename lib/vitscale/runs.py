"""The run folder: what a run writes (atomically) and how runs are read back.

outputs/<sweep>/<run>/
  params.yaml     resolved parameters (written before any compute)
  metrics.jsonl   one JSON object per logged step, appended as the run goes
  summary.json    final metrics, compute, seed, package versions, git commit
  ckpt/           orbax checkpoints
  run.ipynb, run.html   the executed notebook and its rendered report (batch runs)
  status.json     (sweep runs) running | done | failed | submitted: `Status`, for the local runner and
                  the cluster launcher alike

Finding a run by path (`locate`, `find_run`), claiming a folder (`claim`, the one writer of
params.yaml), naming default output folders (`default_out`) and the status records live here.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from vitscale import allocator, config, files, metrics, search, study

PACKAGES = (
    "vitscale",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-cpu",
    "tensorflow-datasets",
    "papermill",
    "numpy",
)


def locate(path: str | Path, exists=Path.exists) -> tuple[Path | None, list[Path]]:
    """(the path `path` names: absolute, or relative to the working directory or to the study folder
    (`study.root`), so `outputs/demo` works from the study and from its notebooks/ alike; the places tried).
    The found path is None when none of them passes `exists`."""
    given = Path(path).expanduser()
    tried = list(dict.fromkeys([given] if given.is_absolute() else [Path.cwd() / given, study.root() / given]))
    found = next((p for p in tried if exists(p)), None)
    return (found.resolve() if found else None), tried


def find_run(path: str | Path, field: str = "pretrained") -> Path:
    """The pretraining run folder `path` names (see `locate`). Raises ConfigError naming the folder if
    it is missing, has no params.yaml or no checkpoint."""
    run, tried = locate(path, Path.is_dir)
    problem = lambda msg: config.ConfigError([config.Problem(field, msg)])
    if run is None:
        looked = ", ".join(str(p) for p in tried)
        what = "is not a folder" if any(p.exists() for p in tried) else "does not exist"
        raise problem(
            f"run folder {str(path)!r} {what} (looked at {looked}); accepted: a pretraining run folder "
            "holding params.yaml and ckpt/, or 'random'"
        )
    if not (run / "params.yaml").is_file():
        raise problem(f"{run} has no params.yaml, so it is not a pretraining run folder")
    ckpt = run / "ckpt"
    if not ckpt.is_dir() or not any(p.name.isdigit() for p in ckpt.iterdir()):
        raise problem(f"{run} has no checkpoint (no step folder in {ckpt}); run or resume its pretraining first")
    return run


def default_out(kind: str, params_file: Path) -> Path:
    """outputs/<name> for pretraining, outputs/<kind>/<name> otherwise, in the study folder."""
    outputs = study.outputs()
    return outputs / params_file.stem if kind == "pretrain" else outputs / kind / params_file.stem


def claim(out: Path, cfg: BaseModel, *, replace: bool = False) -> None:
    """Write params.yaml into `out`, or check that the run already there has the same parameters.
    With `replace`, a run with other parameters is moved to outputs/.replaced/ first; nothing is
    ever overwritten."""
    params = out / "params.yaml"
    if params.exists():
        old = config.resolved(type(cfg), config.load_yaml(params))
        new = cfg.model_dump(mode="json")
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if not diff:
            return
        if not replace:
            raise config.ConfigError(
                [
                    config.Problem(
                        "out",
                        f"{out} holds a run with other parameters (differing: {', '.join(diff)}); nothing was "
                        f"changed. Pass --replace to move it to {study.outputs() / '.replaced'}, or choose another "
                        "output folder",
                    )
                ]
            )
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        dest = study.outputs() / ".replaced" / f"{out.name}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), dest)
        print(f"moved the previous run to {dest}")
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()) and not replace:
        raise config.ConfigError(
            [config.Problem("out", f"{out} exists and is not a run folder; choose another folder")]
        )
    files.atomic_write_text(params, config.dump(cfg))


def to_jsonable(x: Any) -> Any:
    """A JSON-safe copy: numpy scalars and arrays to Python, non-finite floats to None (JSON has no
    NaN; a reader sees "no value", as for a metric never computed)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "shape", None) == ():
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | Path, obj: Any) -> None:
    """The one JSON writer of run folders: atomic, through to_jsonable."""
    files.atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class MetricsLog:
    """metrics.jsonl: one record per line, flushed and fsynced so a crash loses nothing logged.

    With `events`, every numeric value is also written as a TensorBoard scalar at the record's step
    into event files beside metrics.jsonl (flushed at each record), so `tensorboard --logdir` over a
    sweep compares its runs, and a killed run's events stay readable."""

    def __init__(self, path: str | Path, events: bool = False):
        self.path = Path(path)
        self._events = None
        if events:
            # Imported here: only runs that write events pay for TensorBoard's protos.
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._events = EventFileWriter(str(self.path.parent), flush_secs=1)

    def _event(self, step: int, summary, wall_time: float | None = None) -> None:
        from tensorboard.compat.proto import event_pb2

        event = event_pb2.Event(step=step, wall_time=wall_time or time.time(), summary=summary)
        self._events.add_event(event)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """A text summary (e.g. the run's parameters) in the event files."""
        if self._events is not None:
            from tensorboard.plugins.text import summary_v2 as text_summary

            with files.writing(self.path.parent / "events.out.tfevents.*", "TensorBoard events"):
                self._event(step, text_summary.text_pb(tag, text))
                self._events.flush()

    def append(self, record: dict[str, Any]) -> None:
        with files.writing(self.path, "the metrics"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(to_jsonable(record)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if self._events is not None:
            with files.writing(self.path.parent / "events.out.tfevents.*", "TensorBoard events"):
                self._append_events(record)

    def _append_events(self, record: dict[str, Any]) -> None:
        from tensorboard.plugins.scalar import summary_v2 as scalar_summary

        step = int(record["step"])
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, int | float) and not isinstance(value, bool):
                self._event(step, scalar_summary.scalar_pb(key, value), record.get("time"))
        self._events.flush()

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run re-logs them), atomically."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        files.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (a crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """The commit of the code that ran, whether the tracked tree had uncommitted changes, and a hash
    of that diff (two dirty runs with the same hash ran the same code)."""
    cwd = Path(cwd or Path(__file__).resolve().parent)
    try:
        commit = _git(["rev-parse", "HEAD"], cwd).strip() or None
        diff = _git(["diff", "HEAD", "--binary"], cwd) if commit else ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None, "git_diff_sha1": None}
    return {
        "git_commit": commit,
        "git_dirty": bool(diff),
        "git_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
    }


def environment() -> dict[str, Any]:
    """Package versions, Python, platform, git state and allocator: what reproduces a run."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        **git_state(),
        "allocator": allocator.current(),
    }


def final_metrics(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The last value of every train/, test/, val/ and fewshot/ metric over a run's records."""
    final: dict[str, Any] = {}
    for r in records:
        final.update({k: v for k, v in r.items() if k.startswith(("train/", "test/", "val/", "fewshot/"))})
    return final


def find_runs(root: str | Path) -> Iterable[Path]:
    """Every run folder below `root` (those holding params.yaml)."""
    return sorted(p.parent for p in Path(root).rglob("params.yaml"))


def load_curves(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Metrics of a run and of its cooldown branches: {"main": [...], "cooldown_<s>+<k>": [...]}."""
    run_dir = Path(run_dir)
    curves = {"main": read_metrics(run_dir / "metrics.jsonl")}
    for branch in sorted((run_dir / "branches").glob("*/metrics.jsonl")):
        # A branch starts from the main run's state: prepend the main curve up to its start.
        records = read_metrics(branch)
        start = min((r["step"] for r in records), default=0)
        curves[branch.parent.name] = [r for r in curves["main"] if r["step"] < start] + records
    return curves


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per trained model of a sweep (each finished run, and each of its cooldown branches):
    size, data, duration, compute and final metrics. Unfinished runs are left out."""
    rows = []
    keys = search.read_keys(sweep_dir)
    for run_dir in find_runs(sweep_dir):
        if not (run_dir / "summary.json").exists():
            continue
        s = read_json(run_dir / "summary.json")
        if s.get("kind") != "pretrain":  # transfer runs and the like are not points of a scaling study
            continue
        base = _searched(run_dir, keys) | {
            "run_id": run_dir.name,
            "branch": None,
            "variant": s["variant"],
            "parametrization": s.get("parametrization", "standard"),
            "num_params": s["num_params"],
            "train_examples": s.get("train_examples"),
            "batch_size": s["batch_size"],
            "total_steps": s["total_steps"],
            "images_seen": s["images_seen"],
            "train_flops": s["train_flops"],
            "device_seconds": s.get("device_seconds"),
        }
        rows.append({**base, **_metric_columns(s.get("final", {}))})
        for b in s.get("branches", []):
            rows.append(
                {
                    **base,
                    "branch": b["name"],
                    "total_steps": b["total_steps"],
                    "images_seen": b["images_seen"],
                    "train_flops": b.get("train_flops"),
                    "device_seconds": b.get("device_seconds"),
                    **_metric_columns(b.get("metrics", {})),
                }
            )
    return rows


def _metric_columns(final: dict[str, Any]) -> dict[str, Any]:
    """The analysable metrics of a run's final record, and the validation ones a search chooses by."""
    return {
        k: v for k, v in final.items() if metrics.ANALYSABLE.fullmatch(k) or k in (metrics.VAL_ACC, metrics.VAL_LOSS)
    }


def collect_searched(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`collect`'s rows, with a search's best run per point only (vitscale.search: chosen on the validation
    split), and {"keys", "choices", "all_rows", "rate_law"} (the law: best lr against parameters, or why not)."""
    rows = collect(sweep_dir)
    keys = search.read_keys(sweep_dir)
    if not keys:
        return rows, {"keys": [], "choices": [], "all_rows": rows, "rate_law": None}
    best, choices = search.choose([*rows, *diverged_rows(sweep_dir)], keys)
    law = search.rate_law(choices) if "lr" in keys else None
    return best, {"keys": keys, "choices": choices, "all_rows": rows, "rate_law": law}


def diverged_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """A searched sweep's diverged runs (Status "diverged") as rows with their point and searched values and
    no metrics: what a search tried and can never choose."""
    keys = search.read_keys(sweep_dir)
    if not keys:
        return []
    return [
        {"run_id": d.name, "branch": None, "diverged": True, **_searched(d, keys)}
        for d in find_runs(sweep_dir)
        if status_of(d) == "diverged"
    ]


def _searched(run_dir: Path, keys: list[str]) -> dict[str, Any]:
    """A searched run's point (vitscale.search.point_id) and its searched values; {} outside a search."""
    if not keys:
        return {}
    params = config.load_yaml(run_dir / "params.yaml")
    return {"point": search.point_id(params, keys), "search": {k: params.get(k) for k in keys}}


# ----------------------------------------------------------------------------- one writer per run folder
LOCK_NAME = ".writer.lock"
HOLDER_ENV = "VITSCALE_LOCK_HOLDER"  # a child (the papermill kernel) writes under its parent's lock
_HELD: dict[Path, tuple[Any, int]] = {}  # folder -> (open lock file, how many times taken here)


class RunError(Exception):
    """A run folder that cannot be written (busy; a full disk is files.WriteError): one line, no traceback."""


class RunBusy(RunError):
    """Another process writes this run folder."""


def _proc_start(pid: int) -> str:
    """The start time of a process (clock ticks after boot): a pid reused later has another one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def holder_token(pid: int | None = None) -> str:
    """This process (or `pid` here) as host:pid:start, what the lock file and HOLDER_ENV record."""
    pid = pid or os.getpid()
    return f"{platform.node()}:{pid}:{_proc_start(pid)}"


def _job_running(job: str) -> bool | None:
    """Whether SLURM still runs job `job` (None: cannot tell here, no squeue)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.returncode == 0 and out.stdout.strip() not in ("", "COMPLETED", "FAILED", "CANCELLED")


def _describe(holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {since}"


def lock(folder: str | Path) -> None:
    """Become the one writer of `folder` before anything is written into it (its lock file records
    host, pid, start time and SLURM job). Reentrant in a process, and a child started under the
    holder's lock (HOLDER_ENV) writes under it. Raises RunBusy naming the holder; a lock whose
    process is gone frees itself (an OS lock) and is taken over with a note."""
    folder = Path(folder).resolve()
    if folder in _HELD:
        f, n = _HELD[folder]
        _HELD[folder] = (f, n + 1)
        return
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held open while this process writes the folder
    f.seek(0)
    try:
        previous = json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        previous = {}
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        if previous.get("token") and previous.get("token") == os.environ.get(HOLDER_ENV):
            return  # our parent holds it and started us to write (the CLI's papermill kernel)
        raise RunBusy(
            f"{folder}: another process writes this run ({_describe(previous)}); wait for it to end, or stop it "
            f"(kill {previous.get('pid')} on {previous.get('host')}) and run the same command again"
        ) from None
    if previous.get("token") and not previous.get("released"):
        # The OS lock is free, so its process is gone; on a shared file system without cross-host
        # locks, a holder on another host is asked about through its SLURM job.
        other_host = previous.get("host") != platform.node()
        if other_host and previous.get("slurm_job") and _job_running(str(previous["slurm_job"])):
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
            raise RunBusy(
                f"{folder}: SLURM job {previous['slurm_job']} still writes this run ({_describe(previous)}); "
                f"wait for it or `scancel {previous['slurm_job']}`, then run the same command again"
            )
        print(f"note: {folder}: took over the lock of a writer that is gone ({_describe(previous)})", file=sys.stderr)
    record = {
        "token": holder_token(),
        "host": platform.node(),
        "pid": os.getpid(),
        "started": time.time(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }
    f.seek(0)
    f.truncate()
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.environ[HOLDER_ENV] = record["token"]  # the kernels this process starts write under its locks
    if not _HELD:
        atexit.register(_release_all)
    _HELD[folder] = (f, 1)


def _release_all() -> None:
    """At exit: every lock this process still holds is released (a crash leaves its record, which
    the next writer reports as taken over)."""
    for folder in list(_HELD):
        _HELD[folder] = (_HELD[folder][0], 1)
        unlock(folder)


def unlock(folder: str | Path) -> None:
    """Give up one `lock` of `folder`; the last one marks the record released and frees the OS lock."""
    folder = Path(folder).resolve()
    if folder not in _HELD:
        return
    f, n = _HELD[folder]
    if n > 1:
        _HELD[folder] = (f, n - 1)
        return
    del _HELD[folder]
    try:
        f.seek(0)
        record = json.loads(f.read() or "{}")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({**record, "released": time.time()}) + "\n")
        f.flush()
    except (OSError, json.JSONDecodeError):
        pass  # a full disk: the OS lock still goes with the file's closing
    finally:
        f.close()
    if not (folder / "params.yaml").exists():  # never claimed (bad parameters): leave nothing behind
        (folder / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def abandon(folder: str | Path) -> None:
    """Unlock a folder this process locked and then did not claim (bad parameters): leave nothing
    behind that was not there (the lock file, and the folder if it was made for the lock)."""
    folder = Path(folder).resolve()
    held = _HELD.pop(folder, None)
    if held is None:
        return
    (folder / LOCK_NAME).unlink(missing_ok=True)  # still held: no other writer is between
    held[0].close()
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty: made for the lock


@contextlib.contextmanager
def writer(folder: str | Path) -> Iterator[None]:
    """`lock(folder)` for the life of the block."""
    lock(folder)
    try:
        yield
    finally:
        unlock(folder)


# ----------------------------------------------------------------------------- status records
STATUS = "status.json"


@dataclasses.dataclass(frozen=True)
class Status:
    """A run folder's status.json, as the local runner (sweep) and the cluster launcher (cluster) write it."""

    status: Literal["running", "done", "failed", "submitted", "interrupted", "diverged"]
    started: float | None = None
    ended: float | None = None
    submitted: float | None = None
    host: str | None = None
    pid: int | None = None
    job: str | None = None  # the scheduler's job id (cluster runs)
    launcher: str | None = None
    error: str | None = None
    traceback: str | None = None
    reason: str | None = None  # why an interrupted run stopped: "preempted at step N (SIGTERM); ..."

    @classmethod
    def running(cls, job: str | None = None, host: str | None = None) -> Status:
        return cls("running", started=time.time(), host=host or socket.gethostname(), pid=os.getpid(), job=job)

    @classmethod
    def done(cls, job: str | None = None) -> Status:
        return cls("done", ended=time.time(), job=job)

    @classmethod
    def failed(cls, e: BaseException, job: str | None = None) -> Status:
        """From inside the `except` block that caught `e` (keeps the end of its traceback)."""
        tb = traceback.format_exc()[-4000:]
        return cls("failed", ended=time.time(), job=job, error=f"{type(e).__name__}: {e}", traceback=tb)

    @classmethod
    def diverged(cls, reason: str, job: str | None = None) -> Status:
        """Stopped on a non-finite loss (loop.NonFiniteLoss): final, since batches and init are a pure
        function of the seed, a rerun would diverge again (a search records it and never chooses it)."""
        return cls("diverged", ended=time.time(), job=job, reason=reason)

    @classmethod
    def interrupted(cls, reason: str, job: str | None = None) -> Status:
        """Stopped on a signal after saving a checkpoint (loop.Preempted): it resumes."""
        return cls("interrupted", ended=time.time(), job=job, reason=reason)

    @classmethod
    def submitted_as(cls, job: str, launcher: str) -> Status:
        return cls("submitted", submitted=time.time(), job=job, launcher=launcher)

    @classmethod
    def read(cls, folder: Path) -> Status | None:
        """The folder's record, or None without one (keys this version does not know are ignored)."""
        path = folder / STATUS
        if not path.is_file():
            return None
        record = read_json(path)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    def write(self, folder: Path) -> None:
        write_json(folder / STATUS, {k: v for k, v in dataclasses.asdict(self).items() if v is not None})

    def live_here(self) -> bool:
        """Its process runs on this host (a run another sweep process is executing)."""
        if self.host != socket.gethostname() or not isinstance(self.pid, int):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a killed child not yet reaped is a zombie: it runs nothing
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True


def finished_at(folder: Path) -> float | None:
    """When the run in `folder` finished (its summary.json's time), if it wrote its summary and its
    report (run.html); else None: it has something left to do."""
    summary = folder / "summary.json"
    if summary.is_file() and (folder / "run.html").is_file():
        return summary.stat().st_mtime
    return None


def status_of(folder: Path) -> str:
    """done | failed | diverged (a non-finite loss: not retried) | submitted (to a scheduler, not started) |
    running (its process lives on this host) | interrupted (started, not finished, no live process here:
    resumes) | pending."""
    record = Status.read(folder)
    if record is None:
        return "pending"
    if record.status == "done" and (folder / "summary.json").exists():
        return "done"
    if record.status == "running" and record.live_here():
        return "running"
    return record.status if record.status in ("failed", "submitted", "diverged") else "interrupted"
