"""What every estimator shares: input validation, bootstrap intervals, the log-error metric, small solvers."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize

#: The power law and M4 have four free parameters (M4 five with e0); the fewest points any fit accepts.
MIN_POINTS = 4

#: Names accepted by `fit_law` and `extrapolation_check` ("m4" is an alias of "M4").
LAWS = ("power_law", "M1", "M2", "M3", "M4")

#: The authors' margin between e_inf and min(e), and between e0 and max(e) (methods/base.py ERR_MARGIN).
ERR_MARGIN = 1e-3


@dataclass(frozen=True)
class Bootstrap:
    """How a fit's intervals are resampled: percentile intervals at `level` from `samples` refits on
    resampled points (0: no interval), drawn from `seed`; the allocation approaches, backtests and
    frontier laws take it instead of three loose parameters each."""

    samples: int = 100
    level: float = 0.9
    seed: int = 0


#: Power-law exponent range: published error-vs-compute/data exponents lie well inside it (about 0.05-0.7).
B_RANGE = (0.01, 2.0)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def _as_1d(v: Any, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=float)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def validate_points(
    x: Any,
    e: Any,
    *,
    x_name: str,
    e_name: str = "errors",
    min_points: int | None = MIN_POINTS,
    what: str = "the fit",
    positive: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A fit's (x, errors) as 1-D float arrays, checked (equal lengths, finite, positive where asked, at
    least `min_points` for `what`); a ValueError naming the array otherwise. Shared by the scaling fits."""
    x = _as_1d(x, x_name)
    e = _as_1d(e, e_name)
    if x.shape[0] != e.shape[0]:
        raise ValueError(f"{x_name} and {e_name} have mismatched lengths ({x.shape[0]} vs {e.shape[0]})")
    for arr, name in ((x, x_name), (e, e_name)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(
                f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf) "
                f"at index {np.flatnonzero(bad)[:5].tolist()}"
            )
    if positive:
        for arr, name in ((x, x_name), (e, e_name)):
            bad = arr <= 0
            if bad.any():
                raise ValueError(
                    f"{name} must be strictly positive; got {int(bad.sum())} non-positive value(s) (min {arr.min():g})"
                )
    if min_points is not None and x.shape[0] < min_points:
        raise ValueError(f"too few points for {what}: got {x.shape[0]}, need at least {min_points}")
    return x, e


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo = 50.0 * (1.0 - level)
    return (float(np.percentile(samples, lo)), float(np.percentile(samples, 100.0 - lo)))


def check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {level}")


def can_bootstrap(x: np.ndarray) -> bool:
    """Whether resampling can vary the data: with only MIN_POINTS distinct x every accepted resample
    is the data itself, so its refits measure the optimiser's tolerance, not the data's spread."""
    return np.unique(x).shape[0] > MIN_POINTS


def is_whole_sample(idx: np.ndarray) -> bool:
    """Whether a resample holds every point exactly once: its fit is the point estimate itself."""
    return np.unique(idx).shape[0] == idx.shape[0]


def bootstrap_indices(rng: np.random.Generator, x: np.ndarray) -> np.ndarray | None:
    """Resample with replacement; retry until >= MIN_POINTS distinct x values."""
    n = x.shape[0]
    for _ in range(20):
        idx = rng.integers(0, n, size=n)
        if np.unique(x[idx]).shape[0] >= MIN_POINTS:
            return idx
    return None


def rmse_log(pred: Any, e: Any) -> float:
    """RMSE of `log pred - log e`: the M4 paper's extrapolation metric."""
    pred, e = np.asarray(pred, dtype=float), np.asarray(e, dtype=float)
    return float(np.sqrt(np.mean((np.log(pred) - np.log(e)) ** 2)))


def resolved(interval: tuple[float, float], max_ratio: float = 10.0) -> bool:
    """Whether a bootstrap interval pins its parameter down to within a factor `max_ratio`.

    False when it is not finite, reaches or crosses zero, or `|hi| / |lo| > max_ratio` (it spans
    an order of magnitude or more by default): such a parameter is not determined by the data.
    """
    lo, hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo * hi <= 0:
        return False
    a, b = sorted((abs(lo), abs(hi)))
    return b / a <= max_ratio


def unresolved_names(intervals: dict[str, tuple[float, float]], estimates: dict[str, float]) -> list[str]:
    """Parameters whose interval fails `resolved` or does not contain the estimate (a fit on
    a bound sits at one end of its bootstrap distribution; the percentiles can leave it out)."""
    return [k for k, v in intervals.items() if not resolved(v) or not v[0] <= estimates[k] <= v[1]]


def error_margin(e: np.ndarray) -> float:
    return min(ERR_MARGIN, 0.1 * float(e.min()))


@functools.lru_cache(maxsize=64)
def _faces(k: int, bounded: tuple[int, ...]) -> tuple[tuple[np.ndarray, np.ndarray, tuple, tuple], ...]:
    """Each way the `bounded` variables of k can sit on their bounds: (fixed, free, free x free, free x
    fixed) index arrays, built once per shape (box_lstsq runs ~10^5 times in a scaling analysis)."""
    faces = []
    for m in range(1 << len(bounded)):
        fixed = [bounded[j] for j in range(len(bounded)) if m >> j & 1]
        free = [i for i in range(k) if i not in fixed]
        faces.append(
            (np.array(fixed, dtype=np.intp), np.array(free, dtype=np.intp), np.ix_(free, free), np.ix_(free, fixed))
        )
    return tuple(faces)


def box_lstsq(A: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact `min |A v - y|^2` s.t. `lo <= v <= hi` (each bound one-sided or none; few columns).

    Enumerates which bounded variables sit on their bound and keeps the best feasible solution;
    for a convex problem with one-sided bounds that is the optimum.
    """
    G, b, yy = A.T @ A, A.T @ y, float(y @ y)
    k = A.shape[1]
    bound_val = np.where(np.isfinite(lo), lo, hi)
    bounded = tuple(i for i in range(k) if math.isfinite(bound_val[i]))
    best: tuple[float, np.ndarray] | None = None
    for fixed, free, free_free, free_fixed in _faces(k, bounded):
        v = np.zeros(k)
        v[fixed] = bound_val[fixed]
        if free.size:
            rhs = b[free] - G[free_fixed] @ v[fixed]
            try:
                v[free] = np.linalg.solve(G[free_free], rhs)
            except np.linalg.LinAlgError:
                v[free] = np.linalg.lstsq(G[free_free], rhs, rcond=None)[0]
            vf = v[free]
            if (vf < lo[free] - 1e-12).any() or (vf > hi[free] + 1e-12).any():
                continue
        cost = max(yy - 2.0 * float(v @ b) + float(v @ G @ v), 0.0)
        if best is None or cost < best[0]:
            best = (cost, v)
    assert best is not None  # all variables on their bounds is always feasible
    return best


def minimize_1d(obj, lo: float, hi: float, n_grid: int = 41) -> tuple[float, float]:
    """Grid over [lo, hi], then bounded Brent around the best cell; returns (argmin, min)."""
    grid = np.linspace(lo, hi, n_grid)
    vals = np.array([obj(g) for g in grid])
    k = int(np.argmin(vals))
    best_t, best_v = float(grid[k]), float(vals[k])
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, n_grid - 1)]
    if b > a:
        r = optimize.minimize_scalar(obj, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
        if r.fun < best_v:
            best_t, best_v = float(r.x), float(r.fun)
    return best_t, best_v
