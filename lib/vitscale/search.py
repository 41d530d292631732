"""A sweep's hyperparameter search: which runs answer the same question, which of them is best on the
held-out split, whether the best value sits at the edge of the searched range, and the learning-rate
law (best rate against model size).

A sweep file's `search: {lr: [...]}` runs every grid point at each value (vitscale.sweep). Runs that
differ only in the searched keys are one *point*; the analysis keeps, per point (and per cooldown
branch), the run with the lowest validation error: 1 - val/acc, ties to the lower val/loss; a run whose
validation loss is not finite (diverged) is never chosen. Only val/ metrics are read to choose (the
test split would leak into every fit: Porian et al. 2024 and DeepSeek LLM 2024 tune on held-out data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from vitscale import metrics

SEARCH_FILE = "search.json"  # in a sweep folder: {"keys": [...], "extra": {run id: params}} (vitscale.sweep)


def point_id(params: Mapping[str, Any], keys: Sequence[str]) -> str:
    """The point a run belongs to: a hash of its resolved parameters without the searched keys and name."""
    rest = {k: v for k, v in params.items() if k not in keys and k != "name"}
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:10]


def read_keys(sweep_dir: str | Path) -> list[str]:
    """The searched keys of a sweep folder ([] when it has no search)."""
    path = Path(sweep_dir) / SEARCH_FILE
    return list(json.loads(path.read_text())["keys"]) if path.is_file() else []


def val_score(row: Mapping[str, Any]) -> tuple[float, float]:
    """(validation error, validation loss) of a row: lower is better; inf where missing or diverged."""
    loss = row.get(metrics.VAL_LOSS)
    loss = float(loss) if loss is not None and math.isfinite(loss) else math.inf
    acc = row.get(metrics.VAL_ACC)
    if not math.isfinite(loss):
        return math.inf, math.inf
    return (1.0 - float(acc) if acc is not None else loss), loss


@dataclasses.dataclass(frozen=True)
class Choice:
    """One point's search: every value tried with its validation error, the winner, and edge flags."""

    point: str
    branch: str | None
    label: dict[str, Any]  # variant, num_params, train_examples, total_steps, images_seen
    tried: dict[str, list[tuple[Any, float]]]  # key -> [(value, val error of the best run at that value)]
    best: dict[str, Any]  # key -> winning value (None: every run diverged)
    at_edge: dict[str, str | None]  # key -> "low" | "high" | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[dict[str, Any]], list[Choice]]:
    """Per point and branch, the row with the best validation score (rows without a finite one are
    never chosen), and what the search tried. Rows need `point` and `search` ({key: value})."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["point"], r.get("branch"))].append(r)
    best_rows, choices = [], []
    for (point, branch), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        ranked = sorted(group, key=val_score)
        winner = ranked[0] if math.isfinite(val_score(ranked[0])[0]) else None
        if winner is not None:
            best_rows.append({**winner, "searched": {k: winner["search"][k] for k in keys}})
        choices.append(_choice(point, branch, group, winner, keys))
    return best_rows, choices


def _choice(point, branch, group, winner, keys) -> Choice:
    first = next((r for r in group if not r.get("diverged")), group[0])  # a diverged run's row has no size
    label = {k: first.get(k) for k in ("variant", "num_params", "train_examples", "total_steps", "images_seen")}
    tried, best, edge = {}, {}, {}
    for k in keys:
        by_value: dict[Any, float] = {}
        for r in group:
            by_value[r["search"][k]] = min(by_value.get(r["search"][k], math.inf), val_score(r)[0])
        values = sorted(by_value, key=_order)
        tried[k] = [(v, by_value[v]) for v in values]
        best[k] = None if winner is None else winner["search"][k]
        edge[k] = _edge(values, best[k])
    return Choice(point, branch, label, tried, best, edge)


def _order(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v))


def _edge(values: list, best: Any) -> str | None:
    """Whether the best value is the lowest or highest tried (of at least two); None inside."""
    if best is None or len(values) < 2:
        return None
    return "low" if best == values[0] else "high" if best == values[-1] else None


def next_value(values: Sequence[float], edge: str) -> float | int:
    """The value one step beyond an edge of a searched list: on at the grid's ratio (a 2x grid goes on at
    2x), or at its step where the values are evenly spaced or not all positive (0, 50, 100 -> 150)."""
    v = sorted(values)
    a, b = (v[1], v[0]) if edge == "low" else (v[-2], v[-1])
    steps = np.diff(v)
    arithmetic = len(v) > 2 and np.allclose(steps, steps[0], rtol=1e-6)
    nxt = b * (b / a) if min(v) > 0 and not arithmetic else b + (b - a)
    return int(round(nxt)) if all(isinstance(x, int) for x in values) else float(nxt)


# ----------------------------------------------------------------------------- the learning-rate law
@dataclasses.dataclass(frozen=True)
class RateLaw:
    """Best rate = a * x^b over the points' winners, with a 95% interval on the exponent b."""

    x: str  # num_params or train_flops
    n: int  # points fitted
    a: float
    b: float
    b_interval: tuple[float, float]
    flat: str  # "yes" (the interval holds 0 and is narrow), "no" (it excludes 0), "cannot tell"
    points: list[tuple[float, float]]  # (x, best rate) per point

    def predict(self, x: float) -> float:
        return float(self.a * x**self.b)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FLAT_WIDTH = 0.25  # |b| below this over the interval counts as flat: a 10x size change moves the rate < 1.8x


def best_rate(choice: Choice, key: str = "lr") -> float | None:
    """The best rate of one point: the vertex of a parabola through the winner and its two neighbours in
    log rate (the grid's own winner when it sits at an edge or has no neighbours)."""
    tried = [(v, e) for v, e in choice.tried.get(key, []) if math.isfinite(e)]
    if choice.best.get(key) is None or not tried:
        return None
    values = [v for v, _ in tried]
    i = values.index(choice.best[key])
    if choice.at_edge.get(key) or not 0 < i < len(tried) - 1:
        return float(choice.best[key])
    x = np.log([tried[j][0] for j in (i - 1, i, i + 1)])
    y = np.array([tried[j][1] for j in (i - 1, i, i + 1)])
    c2, c1, _ = np.polyfit(x, y, 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else x[1]
    return float(np.exp(np.clip(vertex, x[0], x[2])))


def rate_law(choices: Sequence[Choice], x: str = "num_params", key: str = "lr") -> RateLaw | str:
    """log(best rate) = log a + b log x by least squares over the points of the main runs, with Student's t
    interval on b; a reason (str) when it cannot be fitted (fewer than three distinct sizes)."""
    pts = [(c.label.get(x), best_rate(c, key)) for c in choices if c.branch is None]
    pts = [(float(u), float(r)) for u, r in pts if u and r]
    if len({u for u, _ in pts}) < 3:
        return f"the rate law needs winners at three or more values of {x} (have {len({u for u, _ in pts})})"
    lx, ly = np.log([u for u, _ in pts]), np.log([r for _, r in pts])
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    dof = len(pts) - 2
    stderr = math.sqrt(resid @ resid / dof / np.sum((lx - lx.mean()) ** 2)) if dof > 0 else math.inf
    half = stats.t.ppf(0.975, dof) * stderr if dof > 0 else math.inf
    lo, hi = slope - half, slope + half
    if lo > 0 or hi < 0:
        flat = "no"
    elif max(-lo, hi) <= FLAT_WIDTH:
        flat = "yes"
    else:
        flat = "cannot tell"
    return RateLaw(x, len(pts), float(math.exp(intercept)), float(slope), (float(lo), float(hi)), flat, pts)
