"""Points (N, D, C, error) for the allocation fits: from a CSV of runs, or from a sweep's rows.

CSV columns: `params` (N), `images_seen` or `tokens` (D), `error` or `loss`, optional
`flops` (training compute C; absent: k N D with k = 6, the transformer count), `run`, `group`,
`unique_images` or `unique` (unique items the run drew on: its epochs are D / unique, for repeated data).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: k in C = k N D when a table gives no compute: 6 (2 forward + 4 backward FLOPs per parameter and item).
DEFAULT_K = 6.0

#: Optional columns of unique items (the dataset's size) behind each run; epochs = D / unique.
UNIQUE_COLUMNS = ("unique_images", "unique")

#: The fewest points an allocation fit takes (the joint law has five constants).
MIN_ROWS = 6


class TableError(ValueError):
    """A CSV that cannot be analysed: the column (field) and what is wrong, row named."""

    def __init__(self, field_: str, message: str):
        self.field, self.message = field_, message
        super().__init__(f"{field_}: {message}")


@dataclass
class Points:
    """One entry per trained model: parameters N, data D (items seen), compute C, error. `k` is
    the median C / (N D); `k_given` says whether C came with the data or is k N D."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    error: np.ndarray
    run: list[str]
    group: list[str]
    k: float
    k_given: bool
    data_name: str = "images_seen"
    error_name: str = "error"
    epochs: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def subset(self, keep: np.ndarray) -> Points:
        keep = np.asarray(keep, dtype=bool)
        pick = [i for i in np.flatnonzero(keep)]
        return Points(
            self.N[keep], self.D[keep], self.C[keep], self.error[keep],
            [self.run[i] for i in pick], [self.group[i] for i in pick],
            self.k, self.k_given, self.data_name, self.error_name,
            None if self.epochs is None else self.epochs[keep], list(self.notes),
        )  # fmt: skip


def _number(text: str, column: str, row: int) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise TableError(column, f"row {row}: {text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise TableError(column, f"row {row}: {text!r} must be a positive number")
    return v


def read_csv(path: str | Path, *, k: float | None = None) -> Points:
    """Read a CSV of runs; raises TableError naming the column and row (rows count from 1, after
    the header) for a missing column, a non-numeric or non-positive value, or too few rows."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(kk or "").strip(): v for kk, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TableError("file", f"cannot read it as CSV: {e}") from None
    cols = set(header)
    need = [("params", ("params",)), ("data", ("images_seen", "tokens")), ("error", ("error", "loss"))]
    found = {}
    for what, names in need:
        have = [n for n in names if n in cols]
        if not have:
            raise TableError(" or ".join(names), f"missing column (columns present: {', '.join(header) or 'none'})")
        found[what] = have[0]
    if len(rows) < MIN_ROWS:
        raise TableError("rows", f"{len(rows)} row(s); the joint law needs at least {MIN_ROWS}")
    N = np.array([_number(r.get("params"), "params", i) for i, r in enumerate(rows, 1)])
    D = np.array([_number(r.get(found["data"]), found["data"], i) for i, r in enumerate(rows, 1)])
    E = np.array([_number(r.get(found["error"]), found["error"], i) for i, r in enumerate(rows, 1)])
    if "flops" in cols:
        C = np.array([_number(r.get("flops"), "flops", i) for i, r in enumerate(rows, 1)])
        kk, given = float(np.median(C / (N * D))), True
    else:
        kk = DEFAULT_K if k is None else float(k)
        C, given = kk * N * D, False
    run = [str(r.get("run") or i) for i, r in enumerate(rows, 1)]
    group = [str(r.get("group") or "") for r in rows]
    note = "compute from the flops column" if given else f"compute C = {kk:g} N D (no flops column)"
    epochs = None
    if unique := next((c for c in UNIQUE_COLUMNS if c in cols), None):
        epochs = D / np.array([_number(r.get(unique), unique, i) for i, r in enumerate(rows, 1)])
    return Points(N, D, C, E, run, group, kk, given, found["data"], found["error"], epochs, [note])


def from_rows(rows: Sequence[Mapping[str, Any]], error_of, *, metric: str) -> Points:
    """Points from a sweep's rows (`runs.collect`: each finished run and cooldown branch, i.e. the
    points its schedule makes meaningful), error by `error_of(row, metric)`; rows without the
    metric are left out. k = C / (N D) = 3 x forward FLOPs per image per parameter, per row."""
    keep = [r for r in rows if math.isfinite(error_of(r, metric)) and r.get("train_flops") and r.get("images_seen")]
    N = np.array([float(r["num_params"]) for r in keep])
    D = np.array([float(r["images_seen"]) for r in keep])
    C = np.array([float(r["train_flops"]) for r in keep])
    E = np.array([error_of(r, metric) for r in keep])
    ex = np.array([float(r.get("train_examples") or math.nan) for r in keep])
    run = [str(r["run_id"]) + (f"/{r['branch']}" if r.get("branch") else "") for r in keep]
    group = [str(r.get("variant", "")) for r in keep]
    kk = float(np.median(C / (N * D))) if len(keep) else math.nan
    notes = [
        "points: each run's end and each cooldown branch's end (what an rsqrt or cosine schedule makes meaningful)"
    ]
    if len(keep):
        ks = C / (N * D)
        notes.append(
            f"k = C / (N D) = 3 x forward FLOPs per image per parameter: {ks.min():.3g} to {ks.max():.3g} over the "
            f"sizes; the closed form uses the median {kk:.3g}, IsoFLOP profiles and planned runs each size's own FLOPs"
        )
    return Points(N, D, C, E, run, group, kk, True, "images_seen", metric, D / ex, notes)
