"""The Pareto frontier of (compute, error) and the paper's saturating power law E = a (C + d)^-b + c."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from vitscale.scaling.fitting import (
    B_RANGE,
    MIN_POINTS,
    bootstrap_indices,
    can_bootstrap,
    check_level,
    is_whole_sample,
    percentile_interval,
    rmse_log,
    unresolved_names,
    validate_points,
)


# --------------------------------------------------------------------------
# Pareto frontier
# --------------------------------------------------------------------------
def pareto_frontier(x: Any, y: Any) -> np.ndarray:
    """Mask of the points on the lower-left (min `x`, min `y`) frontier.

    Point `i` is on the frontier iff no point `j` has `x_j <= x_i` and
    `y_j < y_i`; i.e. `y_i` equals the best `y` achieved at or below
    compute `x_i`.  Ties: exact duplicates are all kept; among points with
    the same `x` only those with the lowest `y` are kept; a point with
    larger `x` but *equal* `y` to an earlier frontier point is kept (it is
    not strictly worse).  O(n log n).
    """
    x, y = validate_points(x, y, x_name="x", e_name="y", min_points=None, positive=False)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    best = np.minimum.accumulate(y[order])  # best y among the first k sorted points
    last = np.searchsorted(xs, x, side="right") - 1  # last sorted index with x' <= x
    return y <= best[last]


# --------------------------------------------------------------------------
# saturating power law
# --------------------------------------------------------------------------
_PL_NAMES = ("a", "b", "c", "d")


@dataclass
class PowerLawFit:
    """Result of `fit_power_law`: `E(C) = a (C + d)^-b + c`.

    `intervals` maps each parameter to its bootstrap percentile interval at
    `ci_level` (empty when `n_bootstrap=0`).  `rmse_log` is the RMS of
    `log E_pred - log E` on the fitted points.  `at_bound` names the
    parameters the fit left on a bound (`b` at 0.01 or 2, `c` at 0 or
    `min(E)`, `d` at 0 or `max(C)`); `unresolved` those whose
    interval fails `resolved`.
    """

    a: float
    b: float
    c: float
    d: float
    n: int
    rmse_log: float
    ci_level: float = 0.95
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_bootstrap: int = 0
    at_bound: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    # internal, numerically safe parametrisation: C~ = C / c_ref,
    # E = a_n (C~ + d_n)^-b + c ; rows of bootstrap_params are (a_n, b, c, d_n)
    c_ref: float = 1.0
    a_n: float = float("nan")
    d_n: float = float("nan")
    bootstrap_params: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)), repr=False)

    def predict(self, C: Any) -> np.ndarray:
        """Predicted error at compute `C` (array or scalar)."""
        C = np.asarray(C, dtype=float)
        return _pl_eval(C / self.c_ref, self.a_n, self.b, self.c, self.d_n)

    def predict_band(self, C: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap percentile band of the prediction at `C`."""
        if self.bootstrap_params.shape[0] == 0:
            raise ValueError("no bootstrap samples: refit with n_bootstrap > 0")
        level = self.ci_level if level is None else level
        check_level(level)
        Cn = np.asarray(C, dtype=float)[..., None] / self.c_ref
        p = self.bootstrap_params
        preds = _pl_eval(Cn, p[:, 0], p[:, 1], p[:, 2], p[:, 3])
        lo = 50.0 * (1.0 - level)
        return np.percentile(preds, lo, axis=-1), np.percentile(preds, 100.0 - lo, axis=-1)

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c, "d": self.d}

    def rmse_log_on(self, C: Any, E: Any) -> float:
        """RMSE of log error of the prediction at `C` against `E`."""
        return rmse_log(self.predict(C), E)

    def as_dict(self) -> dict[str, Any]:
        return {
            "law": "E = a * (C + d)^(-b) + c",
            "a": self.a,
            "b": self.b,
            "c": self.c,
            "d": self.d,
            "n": self.n,
            "rmse_log": self.rmse_log,
            "ci_level": self.ci_level,
            "n_bootstrap": self.n_bootstrap,
            "intervals": {k: [float(v[0]), float(v[1])] for k, v in self.intervals.items()},
            "at_bound": list(self.at_bound),
            "unresolved": list(self.unresolved),
        }


def _pl_eval(Cn, a_n, b, c, d_n):
    return a_n * np.power(Cn + d_n, -b) + c


def _pl_fun_jac(Cn: np.ndarray, logE: np.ndarray):
    def unpack(p):
        return math.exp(p[0]), math.exp(p[1]), p[2], math.exp(p[3])

    def fun(p):
        a, b, c, d = unpack(p)
        return np.log(a * np.power(Cn + d, -b) + c) - logE

    def jac(p):
        a, b, c, d = unpack(p)
        base = Cn + d
        ag = a * np.power(base, -b)
        P = ag + c
        J = np.empty((Cn.shape[0], 4))
        J[:, 0] = ag / P
        J[:, 1] = -ag * b * np.log(base) / P
        J[:, 2] = 1.0 / P
        J[:, 3] = -ag * b * (d / base) / P
        return J

    return fun, jac


def _pl_bounds(Cn: np.ndarray, E: np.ndarray):
    emin = float(E.min())
    lo = np.array([-60.0, math.log(B_RANGE[0]), 0.0, math.log(Cn.min() * 1e-6)])
    # a bend (d) beyond the largest compute is not resolved by the data
    hi = np.array([60.0, math.log(B_RANGE[1]), emin * (1.0 - 1e-9), math.log(Cn.max())])
    return lo, hi


def _pl_at_bound(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[str]:
    tol = 1e-6 * (hi - lo)
    out = []
    if p[1] <= lo[1] + tol[1] or p[1] >= hi[1] - tol[1]:
        out.append("b")
    if p[2] <= lo[2] + tol[2] or p[2] >= hi[2] - tol[2]:
        out.append("c")
    if p[3] <= lo[3] + 1e-6 or p[3] >= hi[3] - tol[3]:
        out.append("d")
    return out


def _pl_initial_grid(Cn: np.ndarray, E: np.ndarray, lo, hi) -> list[np.ndarray]:
    emin = float(E.min())
    starts = []
    for b in (0.05, 0.15, 0.3, 0.6, 1.2, 1.9):
        for d in (Cn.min() * 1e-4, Cn.min(), math.sqrt(Cn.min() * Cn.max()), 0.9 * Cn.max()):
            for c in (0.0, 0.5 * emin, 0.9 * emin):
                la = float(np.mean(np.log(E - c) + b * np.log(Cn + d)))
                p = np.array([la, math.log(b), c, math.log(d)])
                starts.append(np.clip(p, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo)))
    return starts


def _pl_unpack(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[float]:
    """(a_n, b, c, d_n); c and d at their lower bounds (0, and 1e-6 of the smallest C) are reported
    as 0, so a floor of 1e-20 from one refit and 1e-22 from another both read as "no floor"."""
    d_n = 0.0 if p[3] <= lo[3] + 1e-6 else math.exp(p[3])
    c = 0.0 if p[2] <= lo[2] + 1e-6 * (hi[2] - lo[2]) else float(p[2])
    return [math.exp(p[0]), math.exp(p[1]), c, d_n]


def _pl_solve(Cn, E, starts, lo, hi, keep: int = 1):
    """Run least_squares from each start; return the `keep` best distinct optima."""
    fun, jac = _pl_fun_jac(Cn, np.log(E))
    sols: list[tuple[float, np.ndarray]] = []
    for p0 in starts:
        p0 = np.clip(p0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        try:
            r = optimize.least_squares(
                fun,
                p0,
                jac=jac,
                bounds=(lo, hi),
                method="trf",
                x_scale="jac",
                ftol=1e-12,
                xtol=1e-12,
                gtol=1e-12,
                max_nfev=2000,
            )
        except (ValueError, FloatingPointError):  # pragma: no cover - defensive
            continue
        if np.all(np.isfinite(r.fun)):
            sols.append((float(2.0 * r.cost), r.x))
    if not sols:
        raise RuntimeError("power-law fit failed from every initial guess")
    sols.sort(key=lambda t: t[0])
    out = [sols[0]]
    for cost, p in sols[1:]:
        if len(out) >= keep:
            break
        if all(np.max(np.abs(p - q)) > 1e-3 for _, q in out):
            out.append((cost, p))
    return out


def fit_power_law(
    C: Any,
    E: Any,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    ci_level: float = 0.95,
) -> PowerLawFit:
    """Fit `E = a (C + d)^-b + c` in log space (see module docstring).

    `ci_level=0.95` gives 2.5/97.5 percentile bootstrap intervals; use
    `0.68` for 16/84. With only 4 distinct `C` (as many as constants) there is nothing to
    resample: no intervals, and every constant is listed as unresolved.  Raises `ValueError` for fewer than 4 points,
    non-positive or non-finite values, or mismatched lengths.
    """
    C, E = validate_points(C, E, x_name="compute", what="the power-law fit")
    check_level(ci_level)
    if np.unique(C).shape[0] < MIN_POINTS:
        raise ValueError(
            f"too few distinct compute values for the power-law fit: got "
            f"{np.unique(C).shape[0]}, need at least {MIN_POINTS}"
        )
    c_ref = float(np.exp(np.mean(np.log(C))))
    Cn = C / c_ref

    lo, hi = _pl_bounds(Cn, E)
    sols = _pl_solve(Cn, E, _pl_initial_grid(Cn, E, lo, hi), lo, hi, keep=3)
    cost, p = sols[0]
    at_bound = _pl_at_bound(p, lo, hi)
    a_n, b, c, d_n = _pl_unpack(p, lo, hi)
    cost = float(np.sum((np.log(_pl_eval(Cn, a_n, b, c, d_n)) - np.log(E)) ** 2))

    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(int(n_bootstrap) if can_bootstrap(C) else 0):
        idx = bootstrap_indices(rng, C)
        if idx is None:
            continue
        if is_whole_sample(idx):  # the data itself: its fit is the estimate, not a noisy refit of it
            boot.append([a_n, b, c, d_n])
            continue
        Cb, Eb = Cn[idx], E[idx]
        lob, hib = _pl_bounds(Cb, Eb)
        starts = [p] + [q for _, q in sols[1:]]
        try:
            pb = _pl_solve(Cb, Eb, starts, lob, hib, keep=1)[0][1]
        except RuntimeError:  # pragma: no cover - defensive
            continue
        boot.append(_pl_unpack(pb, lob, hib))
    boot_arr = np.array(boot, dtype=float).reshape(-1, 4)

    intervals: dict[str, tuple[float, float]] = {}
    if boot_arr.shape[0]:
        with np.errstate(over="ignore"):
            orig = np.column_stack(
                [
                    boot_arr[:, 0] * np.power(c_ref, boot_arr[:, 1]),
                    boot_arr[:, 1],
                    boot_arr[:, 2],
                    boot_arr[:, 3] * c_ref,
                ]
            )
        intervals = {k: percentile_interval(orig[:, i], ci_level) for i, k in enumerate(_PL_NAMES)}

    with np.errstate(over="ignore"):
        a = a_n * c_ref**b
    return PowerLawFit(
        a=float(a),
        b=b,
        c=c,
        d=d_n * c_ref,
        n=int(C.shape[0]),
        rmse_log=math.sqrt(cost / C.shape[0]),
        ci_level=ci_level,
        intervals=intervals,
        n_bootstrap=int(boot_arr.shape[0]),
        at_bound=at_bound,
        unresolved=unresolved_names(intervals, dict(zip(_PL_NAMES, (float(a), b, c, d_n * c_ref))))
        if intervals
        else list(_PL_NAMES),
        c_ref=c_ref,
        a_n=a_n,
        d_n=d_n,
        bootstrap_params=boot_arr,
    )


def frontier_fit(C: Any, E: Any, **kw: Any) -> tuple[PowerLawFit, np.ndarray]:
    """Select the Pareto frontier of all runs and fit the power law to it.

    Returns `(fit, mask)` where `mask` marks the frontier runs (the fitted
    points).  Keyword arguments go to `fit_power_law`.
    """
    C, E = validate_points(C, E, x_name="compute", min_points=None)
    mask = pareto_frontier(C, E)
    if mask.sum() < MIN_POINTS:
        raise ValueError(
            f"too few frontier points for the power-law fit: got {int(mask.sum())} "
            f"(of {C.shape[0]} runs), need at least {MIN_POINTS}"
        )
    return fit_power_law(C[mask], E[mask], **kw), mask
