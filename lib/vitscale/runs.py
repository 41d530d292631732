"""The run folder: what a run writes (atomically) and how runs are read back.

outputs/<sweep>/<run>/
  params.yaml     resolved parameters (written before any compute)
  metrics.jsonl   one JSON object per logged step, appended as the run goes
  summary.json    final metrics, compute, seed, package versions, git commit
  ckpt/           orbax checkpoints
  run.ipynb, run.html   the executed notebook and its rendered report (batch runs)
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item") and getattr(x, "shape", None) == ():
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class MetricsLog:
    """metrics.jsonl: one record per line, flushed and fsynced so a crash loses nothing logged."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run re-logs them), atomically."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


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


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the code that ran (with '+dirty' if the tree had changes)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Package versions, Python, platform and git commit: what reproduces a run."""
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    from vitscale import allocator

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": git_commit(),
        "allocator": allocator.current(),
    }


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "params.yaml").exists() or (path / "summary.json").exists()


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
    for run_dir in find_runs(sweep_dir):
        if not (run_dir / "summary.json").exists():
            continue
        s = read_json(run_dir / "summary.json")
        if s.get("kind") != "pretrain":  # transfer runs and the like are not points of a scaling study
            continue
        base = {
            "run_id": run_dir.name,
            "branch": None,
            "variant": s["variant"],
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
    out = {k: v for k, v in final.items() if k.startswith(("fewshot/", "finetune/")) and not k.endswith("_std")}
    if "test/acc" in final:
        out["test_error"] = 1.0 - final["test/acc"]
    if "test/loss" in final:
        out["test_loss"] = final["test/loss"]
    return out
