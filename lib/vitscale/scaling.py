"""Scaling-law analysis: Pareto frontiers, saturating power laws and M4.

Pure numpy/scipy; no JAX.  Everything here works on plain arrays of
"compute" (or data size, parameters, ...) ``x`` and "error" ``e``.

Estimators
----------
* **Saturating power law** (Zhai et al., "Scaling Vision Transformers",
  CVPR 2022)::

      E(C) = a * (C + d) ** (-b) + c,   a > 0, b > 0, c >= 0, d >= 0

  ``c`` is the irreducible error (high-compute saturation) and ``d`` bends the
  curve at low compute (low-compute saturation): the "double saturation".
  Fitted in log space, ``min sum_i (log E_pred(C_i) - log E_i)^2``, with
  ``scipy.optimize.least_squares`` started from a grid of initial guesses.
  Internally ``C`` is divided by its geometric mean, and the parameters are
  ``(log a~, log b, c, log d~)`` with ``b`` in ``[0.01, 2]``, ``c`` in
  ``[0, min(E))`` and ``d`` up to ``max(C)``; a fit that ends on one of these
  bounds lists it in ``at_bound`` (the curve does not determine it).
  Uncertainty: percentile bootstrap over points resampled with replacement.

* **M1, M2, M3, M4** (Alabdulmohsin, Neyshabur & Zhai, "Revisiting Neural
  Scaling Laws in Language and Vision", NeurIPS 2022, arXiv:2209.06640), in
  the forms and constraints of the authors' estimators
  (google-research/revisiting_neural_scaling_laws, ``methods/m1.py`` ..
  ``m4.py``)::

      M1:  e = beta * x^c
      M2:  e = e_inf + beta * x^c,               0 <= e_inf <= min(e) - m
      M3:  e = beta * (1/x + gamma)^c,           c >= 0, gamma >= 0
      M4:  (e - e_inf) / (e0 - e)^alpha = beta * x^c,
           c <= 0, alpha >= 0, log(beta) >= 0,  0 <= e_inf <= min(e) - m,  e0 >= max(e) + m

  with the authors' margin ``m = 1e-3`` (``0.1 * min(e)`` for errors below
  0.01).  Each is fitted, as the paper defines, by least squares in the log
  domain of both sides of its law, e.g. for M4::

      min sum_i [ log(e_i - e_inf) - alpha*log(e0 - e_i) - log(beta) - c*log(x_i) ]^2

  For fixed non-linear parameters (``e_inf`` in M2; ``gamma`` in M3;
  ``e_inf`` and ``e0`` in M4) this is a box-constrained linear least-squares
  problem in ``(log beta, c[, alpha])``, solved exactly (active-set
  enumeration); we minimise the profile over the rest (grid + bounded
  polish).  ``log(beta) >= 0`` is in the units of ``x`` as passed (the
  authors' raw data sizes); ``e0`` is learned, as in the estimator the paper
  evaluates, between ``max(e) + m`` and ``e0_max`` (the authors leave it
  unbounded; we search up to ``10 * max(e)`` when ``e0_max`` is None and
  report the bound if the optimum reaches it).

  How this relates to the authors' code: their M4 alternates a positive
  linear regression for ``(log beta, c, alpha)`` with gradient / Newton steps
  on ``e_inf`` and ``e0``, but its regression column ``log(e0 - e)`` keeps the
  *initial* ``e0`` while the steps and the prediction use the updated one, so
  it does not minimise the stated objective; we minimise it (its residual is
  lower than theirs on the benchmark curves) and predict from the implicit
  law exactly.  ``learn_e0=False`` holds ``e0`` at the random-guess error
  instead (the paper's ablation; worse on the benchmark, see
  benchmarks/README.md).  Prediction solves the implicit law for ``e_x`` by
  vectorised bisection (it is monotone in ``e_x`` on ``(e_inf, e0)``).

Common interface: :func:`fit_law` fits any of ``"power_law", "M1", "M2",
"M3", "M4"`` and returns an object with ``predict(x)``, ``params`` (dict),
``at_bound`` (names of parameters sitting on a constraint), ``rmse_log``
(on the fitted points) and ``rmse_log_on(x, e)``.  Bootstrap intervals that
span an order of magnitude or more (or reach zero) are listed in
``unresolved``; see :func:`resolved`.

Validation metric (all estimators, and :func:`extrapolation_check`): RMSE
of ``log(error)``, as in the M4 paper (:func:`rmse_log`), plus the mean
absolute relative error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

__all__ = [
    "pareto_frontier",
    "PowerLawFit",
    "fit_power_law",
    "frontier_fit",
    "M4Fit",
    "fit_m4",
    "m4_solve",
    "extrapolation_check",
    "MIN_POINTS",
    "LAWS",
    "LawFit",
    "fit_law",
    "fit_m1",
    "fit_m2",
    "fit_m3",
    "rmse_log",
    "resolved",
]

#: The power law and M4 have four free parameters (M4 five with e0); the fewest points any fit accepts.
MIN_POINTS = 4

#: Names accepted by :func:`fit_law` and :func:`extrapolation_check` ("m4" is an alias of "M4").
LAWS = ("power_law", "M1", "M2", "M3", "M4")

#: The authors' margin between e_inf and min(e), and between e0 and max(e) (methods/base.py ERR_MARGIN).
ERR_MARGIN = 1e-3

#: Power-law exponent range: published error-vs-compute/data exponents lie well inside it (about 0.05-0.7).
_B_RANGE = (0.01, 2.0)


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


def _validate(
    x: Any,
    e: Any,
    *,
    x_name: str,
    e_name: str = "errors",
    min_points: int | None = MIN_POINTS,
    what: str = "the fit",
    positive: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
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


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo = 50.0 * (1.0 - level)
    return (float(np.percentile(samples, lo)), float(np.percentile(samples, 100.0 - lo)))


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {level}")


def _bootstrap_indices(rng: np.random.Generator, x: np.ndarray) -> np.ndarray | None:
    """Resample with replacement; retry until >= MIN_POINTS distinct x values."""
    n = x.shape[0]
    for _ in range(20):
        idx = rng.integers(0, n, size=n)
        if np.unique(x[idx]).shape[0] >= MIN_POINTS:
            return idx
    return None


def rmse_log(pred: Any, e: Any) -> float:
    """RMSE of ``log pred - log e``: the M4 paper's extrapolation metric."""
    pred, e = np.asarray(pred, dtype=float), np.asarray(e, dtype=float)
    return float(np.sqrt(np.mean((np.log(pred) - np.log(e)) ** 2)))


def resolved(interval: tuple[float, float], max_ratio: float = 10.0) -> bool:
    """Whether a bootstrap interval pins its parameter down to within a factor ``max_ratio``.

    False when it is not finite, reaches or crosses zero, or ``|hi| / |lo| > max_ratio`` (it spans
    an order of magnitude or more by default): such a parameter is not determined by the data.
    """
    lo, hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo * hi <= 0:
        return False
    a, b = sorted((abs(lo), abs(hi)))
    return b / a <= max_ratio


def _unresolved(intervals: dict[str, tuple[float, float]]) -> list[str]:
    return [k for k, v in intervals.items() if not resolved(v)]


def _margin(e: np.ndarray) -> float:
    return min(ERR_MARGIN, 0.1 * float(e.min()))


def _box_lstsq(A: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact ``min |A v - y|^2`` s.t. ``lo <= v <= hi`` (each bound one-sided or none; few columns).

    Enumerates which bounded variables sit on their bound and keeps the best feasible solution;
    for a convex problem with one-sided bounds that is the optimum.
    """
    G, b, yy = A.T @ A, A.T @ y, float(y @ y)
    k = A.shape[1]
    bound_val = np.where(np.isfinite(lo), lo, hi)
    bounded = [i for i in range(k) if np.isfinite(bound_val[i])]
    best: tuple[float, np.ndarray] | None = None
    for m in range(1 << len(bounded)):
        fixed = [bounded[j] for j in range(len(bounded)) if m >> j & 1]
        free = [i for i in range(k) if i not in fixed]
        v = np.zeros(k)
        v[fixed] = bound_val[fixed]
        if free:
            rhs = b[free] - G[np.ix_(free, fixed)] @ v[fixed]
            try:
                v[free] = np.linalg.solve(G[np.ix_(free, free)], rhs)
            except np.linalg.LinAlgError:
                v[free] = np.linalg.lstsq(G[np.ix_(free, free)], rhs, rcond=None)[0]
            if np.any(v[free] < lo[free] - 1e-12) or np.any(v[free] > hi[free] + 1e-12):
                continue
        cost = max(yy - 2.0 * float(v @ b) + float(v @ G @ v), 0.0)
        if best is None or cost < best[0]:
            best = (cost, v)
    assert best is not None  # all variables on their bounds is always feasible
    return best


def _minimize_1d(obj, lo: float, hi: float, n_grid: int = 41) -> tuple[float, float]:
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


# --------------------------------------------------------------------------
# Pareto frontier
# --------------------------------------------------------------------------
def pareto_frontier(x: Any, y: Any) -> np.ndarray:
    """Mask of the points on the lower-left (min ``x``, min ``y``) frontier.

    Point ``i`` is on the frontier iff no point ``j`` has ``x_j <= x_i`` and
    ``y_j < y_i``; i.e. ``y_i`` equals the best ``y`` achieved at or below
    compute ``x_i``.  Ties: exact duplicates are all kept; among points with
    the same ``x`` only those with the lowest ``y`` are kept; a point with
    larger ``x`` but *equal* ``y`` to an earlier frontier point is kept (it is
    not strictly worse).  O(n log n).
    """
    x, y = _validate(x, y, x_name="x", e_name="y", min_points=None, positive=False)
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
    """Result of :func:`fit_power_law`: ``E(C) = a (C + d)^-b + c``.

    ``intervals`` maps each parameter to its bootstrap percentile interval at
    ``ci_level`` (empty when ``n_bootstrap=0``).  ``rmse_log`` is the RMS of
    ``log E_pred - log E`` on the fitted points.  ``at_bound`` names the
    parameters the fit left on a bound (``b`` at 0.01 or 2, ``c`` at 0 or
    ``min(E)``, ``d`` at 0 or ``max(C)``); ``unresolved`` those whose
    interval fails :func:`resolved`.
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
        """Predicted error at compute ``C`` (array or scalar)."""
        C = np.asarray(C, dtype=float)
        return _pl_eval(C / self.c_ref, self.a_n, self.b, self.c, self.d_n)

    def predict_band(self, C: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap percentile band of the prediction at ``C``."""
        if self.bootstrap_params.shape[0] == 0:
            raise ValueError("no bootstrap samples: refit with n_bootstrap > 0")
        level = self.ci_level if level is None else level
        _check_level(level)
        Cn = np.asarray(C, dtype=float)[..., None] / self.c_ref
        p = self.bootstrap_params
        preds = _pl_eval(Cn, p[:, 0], p[:, 1], p[:, 2], p[:, 3])
        lo = 50.0 * (1.0 - level)
        return np.percentile(preds, lo, axis=-1), np.percentile(preds, 100.0 - lo, axis=-1)

    @property
    def params(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c, "d": self.d}

    def rmse_log_on(self, C: Any, E: Any) -> float:
        """RMSE of log error of the prediction at ``C`` against ``E``."""
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
    lo = np.array([-60.0, math.log(_B_RANGE[0]), 0.0, math.log(Cn.min() * 1e-6)])
    # a bend (d) beyond the largest compute is not resolved by the data
    hi = np.array([60.0, math.log(_B_RANGE[1]), emin * (1.0 - 1e-9), math.log(Cn.max())])
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


def _pl_unpack(p: np.ndarray, lo: np.ndarray) -> list[float]:
    """(a_n, b, c, d_n); d at its lower bound (1e-6 of the smallest C) is reported as 0."""
    d_n = 0.0 if p[3] <= lo[3] + 1e-6 else math.exp(p[3])
    return [math.exp(p[0]), math.exp(p[1]), float(p[2]), d_n]


def _pl_solve(Cn, E, starts, lo, hi, keep: int = 1):
    """Run least_squares from each start; return the ``keep`` best distinct optima."""
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
    """Fit ``E = a (C + d)^-b + c`` in log space (see module docstring).

    ``ci_level=0.95`` gives 2.5/97.5 percentile bootstrap intervals; use
    ``0.68`` for 16/84.  Raises ``ValueError`` for fewer than 4 points,
    non-positive or non-finite values, or mismatched lengths.
    """
    C, E = _validate(C, E, x_name="compute", what="the power-law fit")
    _check_level(ci_level)
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
    a_n, b, c, d_n = _pl_unpack(p, lo)
    cost = float(np.sum((np.log(_pl_eval(Cn, a_n, b, c, d_n)) - np.log(E)) ** 2))

    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(int(n_bootstrap)):
        idx = _bootstrap_indices(rng, C)
        if idx is None:
            continue
        Cb, Eb = Cn[idx], E[idx]
        lob, hib = _pl_bounds(Cb, Eb)
        starts = [q for _, q in sols]
        try:
            pb = _pl_solve(Cb, Eb, starts, lob, hib, keep=1)[0][1]
        except RuntimeError:  # pragma: no cover - defensive
            continue
        boot.append(_pl_unpack(pb, lob))
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
        intervals = {k: _interval(orig[:, i], ci_level) for i, k in enumerate(_PL_NAMES)}

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
        unresolved=_unresolved(intervals),
        c_ref=c_ref,
        a_n=a_n,
        d_n=d_n,
        bootstrap_params=boot_arr,
    )


def frontier_fit(C: Any, E: Any, **kw: Any) -> tuple[PowerLawFit, np.ndarray]:
    """Select the Pareto frontier of all runs and fit the power law to it.

    Returns ``(fit, mask)`` where ``mask`` marks the frontier runs (the fitted
    points).  Keyword arguments go to :func:`fit_power_law`.
    """
    C, E = _validate(C, E, x_name="compute", min_points=None)
    mask = pareto_frontier(C, E)
    if mask.sum() < MIN_POINTS:
        raise ValueError(
            f"too few frontier points for the power-law fit: got {int(mask.sum())} "
            f"(of {C.shape[0]} runs), need at least {MIN_POINTS}"
        )
    return fit_power_law(C[mask], E[mask], **kw), mask


# --------------------------------------------------------------------------
# M4
# --------------------------------------------------------------------------
def m4_solve(x: Any, *, e_inf: float, beta: float, c: float, alpha: float, e0: float) -> np.ndarray:
    """Solve ``(e - e_inf)/(e0 - e)^alpha = beta x^c`` for ``e`` (vectorised).

    Writes ``e = e_inf + B*sigmoid(u)`` with ``B = e0 - e_inf`` and bisects on
    ``u`` (the left side is increasing in ``u``), which keeps full relative
    precision of ``e - e_inf`` even when it is tiny.  ``alpha == 0`` is the
    explicit law ``e = e_inf + beta x^c``.
    """
    x = np.asarray(x, dtype=float)
    logf = math.log(beta) + c * np.log(x)
    if alpha <= 1e-12:
        return e_inf + np.exp(logf)
    B = e0 - e_inf
    logB = math.log(B)

    def h(u):
        # log w - alpha*log(B - w) - log f, with w = B*sigmoid(u)
        return (logB - np.logaddexp(0.0, -u)) - alpha * (logB - np.logaddexp(0.0, u)) - logf

    # bracket from log sigmoid(u) in [min(0,u) - log 2, min(0,u)]
    k = logf - (1.0 - alpha) * logB
    lo = np.minimum(k - alpha * math.log(2.0), -1.0) - 1.0
    hi = np.maximum((k + math.log(2.0)) / alpha, 1.0) + 1.0
    lo, hi = np.broadcast_to(lo, x.shape).copy(), np.broadcast_to(hi, x.shape).copy()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        pos = h(mid) > 0
        hi = np.where(pos, mid, hi)
        lo = np.where(pos, lo, mid)
        if np.all(hi - lo <= 1e-13 * np.maximum(1.0, np.abs(mid))):
            break
    u = 0.5 * (lo + hi)
    return e_inf + B * np.exp(-np.logaddexp(0.0, -u))


_M4_NAMES = ("e_inf", "beta", "c", "alpha", "e0")


@dataclass
class M4Fit:
    """Result of :func:`fit_m4`: ``(e - e_inf)/(e0 - e)^alpha = beta x^c``.

    ``rmse_log_objective`` is the RMS residual of the fitting objective (log
    of both sides); ``rmse_log`` is the RMS of ``log e_pred - log e`` on the
    fitted points.  ``e0`` is the fitted value (learned unless
    ``learn_e0=False``), ``e0_init`` the random-guess error passed in.
    ``at_bound`` names the parameters left on a constraint (``e_inf`` at 0
    or ``min(e) - m``, ``e0`` at ``max(e) + m`` or its cap, ``c`` at 0,
    ``alpha`` at 0, ``beta`` at 1).
    """

    e_inf: float
    beta: float
    c: float
    alpha: float
    e0: float
    n: int
    rmse_log: float
    rmse_log_objective: float
    ci_level: float = 0.95
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_bootstrap: int = 0
    x_ref: float = 1.0
    beta_n: float = float("nan")  # beta for x / x_ref
    e0_init: float | None = None
    learn_e0: bool = True
    at_bound: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def predict(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return m4_solve(x / self.x_ref, e_inf=self.e_inf, beta=self.beta_n, c=self.c, alpha=self.alpha, e0=self.e0)

    @property
    def params(self) -> dict[str, float]:
        return {"e_inf": self.e_inf, "beta": self.beta, "c": self.c, "alpha": self.alpha, "e0": self.e0}

    def rmse_log_on(self, x: Any, e: Any) -> float:
        """RMSE of log error of the prediction at ``x`` against ``e``."""
        return rmse_log(self.predict(x), e)

    def as_dict(self) -> dict[str, Any]:
        return {
            "law": "(e - e_inf) / (e0 - e)^alpha = beta * x^c",
            "e_inf": self.e_inf,
            "beta": self.beta,
            "c": self.c,
            "alpha": self.alpha,
            "e0": self.e0,
            "e0_init": self.e0_init,
            "learn_e0": self.learn_e0,
            "n": self.n,
            "rmse_log": self.rmse_log,
            "rmse_log_objective": self.rmse_log_objective,
            "ci_level": self.ci_level,
            "n_bootstrap": self.n_bootstrap,
            "intervals": {k: [float(v[0]), float(v[1])] for k, v in self.intervals.items()},
            "at_bound": list(self.at_bound),
            "unresolved": list(self.unresolved),
        }


# e0 - e0_lo = W * (10^(8 t) - 1) / (10^8 - 1), t in [0, 1]: log-spaced from the bound to the cap
_E0_DECADES = 8.0


def _e0_of(t: float, e0_lo: float, W: float) -> float:
    return e0_lo + W * (10.0 ** (_E0_DECADES * t) - 1.0) / (10.0**_E0_DECADES - 1.0)


def _m4_linear(logx: np.ndarray, e: np.ndarray, e_inf: float, e0: float, lb_min: float):
    """Best (log beta, c, alpha) and residual norm^2 for fixed e_inf and e0 (bounded linear LS)."""
    A = np.column_stack([np.ones_like(logx), logx, np.log(e0 - e)])
    return _box_lstsq(A, np.log(e - e_inf), np.array([lb_min, -np.inf, 0.0]), np.array([np.inf, 0.0, np.inf]))


def _m4_core(
    logx: np.ndarray,
    e: np.ndarray,
    e0: float | None,
    learn_e0: bool,
    e0_max: float | None,
    lb_min: float,
    start: tuple[float, float] | None = None,
):
    """Minimise the M4 objective over (e_inf, e0) with (log beta, c, alpha) profiled out.

    ``start`` (a previous optimum's (s, t)) replaces the grid by a local polish (bootstrap).
    Returns (e_inf, e0, log_beta, c, alpha, cost, at_bound, (s, t)).
    """
    m = _margin(e)
    inf_hi = float(e.min()) - m
    e0_lo = float(e.max()) + m
    if learn_e0:
        cap = 10.0 * float(e.max()) if e0_max is None else float(e0_max)
        W = max(cap - e0_lo, 0.0)
    else:
        W = 0.0

    def e_inf_of(s):
        return inf_hi * min(max(s, 0.0), 1.0)

    def obj2(p):
        e0_ = _e0_of(min(max(p[1], 0.0), 1.0), e0_lo, W) if learn_e0 else float(e0)
        return _m4_linear(logx, e, e_inf_of(p[0]), e0_, lb_min)[0]

    if learn_e0 and W > 0:
        if start is None:
            grid = [(si, ti) for si in np.linspace(0.0, 1.0, 21) for ti in np.linspace(0.0, 1.0, 17)]
        else:
            grid = [start]
        vals = np.array([obj2(p) for p in grid])
        best_p, best_v = np.array(grid[int(np.argmin(vals))]), float(vals.min())
        for k in np.argsort(vals)[:3]:
            r = optimize.minimize(
                obj2,
                np.array(grid[k]),
                method="L-BFGS-B",
                bounds=[(0.0, 1.0), (0.0, 1.0)],
                options={"ftol": 1e-15, "gtol": 1e-13, "maxiter": 1000},
            )
            if r.fun < best_v:
                best_p, best_v = np.clip(r.x, 0.0, 1.0), float(r.fun)

        # Gauss-Newton on the profiled residuals (variable projection): converges to full
        # precision where the quasi-Newton polish of the cost stalls (near-zero residuals)
        def resid(p):
            e_inf_, e0_ = e_inf_of(p[0]), _e0_of(min(max(p[1], 0.0), 1.0), e0_lo, W)
            A = np.column_stack([np.ones_like(logx), logx, np.log(e0_ - e)])
            y = np.log(e - e_inf_)
            v = _box_lstsq(A, y, np.array([lb_min, -np.inf, 0.0]), np.array([np.inf, 0.0, np.inf]))[1]
            return A @ v - y

        try:
            r = optimize.least_squares(
                resid, best_p, bounds=([0.0, 0.0], [1.0, 1.0]), x_scale="jac", ftol=1e-15, xtol=1e-15, gtol=1e-15
            )
            if 2.0 * r.cost < best_v:
                best_p, best_v = np.clip(r.x, 0.0, 1.0), 2.0 * float(r.cost)
        except ValueError:  # pragma: no cover - start on a bound where the solver cannot move
            pass
        s_best, t_best = float(best_p[0]), float(best_p[1])
        e0_fit = _e0_of(t_best, e0_lo, W)
    else:
        e0_fit = float(e0) if not learn_e0 else e0_lo
        t_best = 0.0
        s_best, _ = _minimize_1d(lambda s: obj2((s, 0.0)), 0.0, 1.0)
    e_inf = e_inf_of(s_best)
    cost, (log_beta, c, alpha) = _m4_linear(logx, e, e_inf, e0_fit, lb_min)
    at_bound = []
    if s_best <= 1e-7 or s_best >= 1.0 - 1e-7:
        at_bound.append("e_inf")
    if learn_e0 and (t_best <= 1e-7 or t_best >= 1.0 - 1e-7):
        at_bound.append("e0")
    if log_beta <= lb_min + 1e-12:
        at_bound.append("beta")
    if c >= -1e-12:
        at_bound.append("c")
    if alpha <= 1e-12:
        at_bound.append("alpha")
    return e_inf, e0_fit, float(log_beta), float(c), float(alpha), cost, at_bound, (s_best, t_best)


def fit_m4(
    x: Any,
    e: Any,
    e0: float | None,
    *,
    learn_e0: bool = True,
    e0_max: float | None = None,
    beta_min: float | None = 1.0,
    n_bootstrap: int = 0,
    seed: int = 0,
    ci_level: float = 0.95,
) -> M4Fit:
    """Fit M4 as published by Alabdulmohsin et al. (2022): ``e0`` learned (module docstring).

    ``e0`` is the random-guess error, e.g. ``1 - 1/num_classes``: all errors must lie below it; it
    is the value held fixed with ``learn_e0=False`` (None: no such check, and e0 must be learned).
    ``beta_min`` is the authors' ``log(beta) >= 0`` (in the units of ``x``); None drops it.
    Bootstrap intervals as in :func:`fit_power_law` when ``n_bootstrap > 0``.
    """
    x, e = _validate(x, e, x_name="x", what="the M4 fit")
    _check_level(ci_level)
    if e0 is None:
        if not learn_e0:
            raise ValueError("fit_m4: e0=None needs learn_e0=True (there is no random-guess error to hold fixed)")
    else:
        e0 = float(e0)
        if not np.isfinite(e0) or e0 <= 0:
            raise ValueError(f"e0 (random-guess error) must be a positive finite number, got {e0}")
        if np.any(e >= e0):
            raise ValueError(
                f"all errors must be below e0={e0:g} (the random-guess error); "
                f"got {int(np.sum(e >= e0))} value(s) >= e0 (max {e.max():g})"
            )
    if e0_max is not None and not (math.isfinite(e0_max) and e0_max > e.max()):
        raise ValueError(f"e0_max must be a finite number above the largest error {e.max():g}, got {e0_max}")
    if beta_min is not None and not (math.isfinite(beta_min) and beta_min > 0):
        raise ValueError(f"beta_min must be a positive finite number or None, got {beta_min}")
    if np.unique(x).shape[0] < MIN_POINTS:
        raise ValueError(
            f"too few distinct x values for the M4 fit: got {np.unique(x).shape[0]}, need at least {MIN_POINTS}"
        )
    lb_min = -np.inf if beta_min is None else math.log(beta_min)
    # the regression uses log x in the caller's units, so log(beta) >= log(beta_min) is the authors' box
    logx = np.log(x)
    x_ref = float(np.exp(np.mean(logx)))
    e_inf, e0_fit, lb, c, alpha, cost, at_bound, st = _m4_core(logx, e, e0, learn_e0, e0_max, lb_min)

    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(int(n_bootstrap)):
        idx = _bootstrap_indices(rng, x)
        if idx is None:
            continue
        ei, e0b, lbb, cb, ab, *_ = _m4_core(logx[idx], e[idx], e0, learn_e0, e0_max, lb_min, start=st)
        boot.append([ei, math.exp(lbb), cb, ab, e0b])
    boot_arr = np.array(boot, dtype=float).reshape(-1, 5)
    names = _M4_NAMES if learn_e0 else _M4_NAMES[:4]
    intervals = {k: _interval(boot_arr[:, i], ci_level) for i, k in enumerate(names)} if boot_arr.shape[0] else {}

    fit = M4Fit(
        e_inf=float(e_inf),
        beta=float(math.exp(lb)),
        c=c,
        alpha=alpha,
        e0=float(e0_fit),
        n=int(x.shape[0]),
        rmse_log=float("nan"),
        rmse_log_objective=math.sqrt(cost / x.shape[0]),
        ci_level=ci_level,
        intervals=intervals,
        n_bootstrap=int(boot_arr.shape[0]),
        x_ref=x_ref,
        beta_n=float(math.exp(lb + c * math.log(x_ref))),
        e0_init=e0,
        learn_e0=learn_e0,
        at_bound=at_bound,
        unresolved=_unresolved(intervals),
    )
    fit.rmse_log = rmse_log(fit.predict(x), e)
    return fit


# --------------------------------------------------------------------------
# M1, M2, M3 and the common interface
# --------------------------------------------------------------------------
_LAW_TEXT = {
    "M1": "e = beta * x^c",
    "M2": "e = e_inf + beta * x^c",
    "M3": "e = beta * (1/x + gamma)^c",
}


@dataclass
class LawFit:
    """Result of :func:`fit_m1`, :func:`fit_m2` or :func:`fit_m3` (laws in the module docstring).

    ``params`` holds the parameters in the units of ``x`` as passed; ``rmse_log`` is on the fitted
    points, ``rmse_log_objective`` the RMS residual of the fitting objective; ``at_bound`` names
    the parameters left on a constraint.
    """

    name: str
    params: dict[str, float]
    n: int
    rmse_log: float
    rmse_log_objective: float
    at_bound: list[str] = field(default_factory=list)
    x_ref: float = 1.0  # M3 works internally with x / x_ref

    @property
    def law(self) -> str:
        return _LAW_TEXT[self.name]

    def predict(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        p = self.params
        if self.name == "M1":
            return p["beta"] * np.power(x, p["c"])
        if self.name == "M2":
            return p["e_inf"] + p["beta"] * np.power(x, p["c"])
        # M3 in normalised units: beta (1/x + gamma)^c = beta x_ref^-c (x_ref/x + gamma x_ref)^c
        xr = self.x_ref
        return p["beta"] * xr ** (-p["c"]) * np.power(xr / x + p["gamma"] * xr, p["c"])

    def rmse_log_on(self, x: Any, e: Any) -> float:
        """RMSE of log error of the prediction at ``x`` against ``e``."""
        return rmse_log(self.predict(x), e)

    def as_dict(self) -> dict[str, Any]:
        return {
            "law": self.law,
            **{k: float(v) for k, v in self.params.items()},
            "n": self.n,
            "rmse_log": self.rmse_log,
            "rmse_log_objective": self.rmse_log_objective,
            "at_bound": list(self.at_bound),
        }


def _check_distinct(x: np.ndarray, what: str, k: int) -> None:
    if np.unique(x).shape[0] < k:
        raise ValueError(f"too few distinct x values for {what}: got {np.unique(x).shape[0]}, need at least {k}")


def fit_m1(x: Any, e: Any) -> LawFit:
    """Fit M1, ``e = beta x^c``: ordinary least squares of ``log e`` on ``log x`` (c unconstrained)."""
    x, e = _validate(x, e, x_name="x", what="the M1 fit", min_points=2)
    _check_distinct(x, "the M1 fit", 2)
    A = np.column_stack([np.ones_like(x), np.log(x)])
    cost, (lb, c) = _box_lstsq(A, np.log(e), np.full(2, -np.inf), np.full(2, np.inf))
    fit = LawFit("M1", {"beta": math.exp(lb), "c": float(c)}, int(x.size), float("nan"), math.sqrt(cost / x.size))
    fit.rmse_log = fit.rmse_log_on(x, e)
    return fit


def fit_m2(x: Any, e: Any) -> LawFit:
    """Fit M2, ``e = e_inf + beta x^c``: least squares of ``log(e - e_inf)`` on ``log x``, e_inf profiled."""
    x, e = _validate(x, e, x_name="x", what="the M2 fit", min_points=3)
    _check_distinct(x, "the M2 fit", 3)
    logx = np.log(x)
    x_ref = float(np.exp(np.mean(logx)))
    A = np.column_stack([np.ones_like(x), logx - math.log(x_ref)])
    inf_hi = float(e.min()) - _margin(e)
    free = (np.full(2, -np.inf), np.full(2, np.inf))

    def obj(s):
        return _box_lstsq(A, np.log(e - inf_hi * s), *free)[0]

    s, _ = _minimize_1d(obj, 0.0, 1.0)
    cost, (lb, c) = _box_lstsq(A, np.log(e - inf_hi * s), *free)
    at_bound = ["e_inf"] if s <= 1e-7 or s >= 1.0 - 1e-7 else []
    params = {"e_inf": inf_hi * s, "beta": math.exp(lb - c * math.log(x_ref)), "c": float(c)}
    fit = LawFit("M2", params, int(x.size), float("nan"), math.sqrt(cost / x.size), at_bound)
    fit.rmse_log = fit.rmse_log_on(x, e)
    return fit


def fit_m3(x: Any, e: Any) -> LawFit:
    """Fit M3, ``e = beta (1/x + gamma)^c`` with ``c, gamma >= 0``: least squares in log space, gamma profiled."""
    x, e = _validate(x, e, x_name="x", what="the M3 fit", min_points=3)
    _check_distinct(x, "the M3 fit", 3)
    x_ref = float(np.exp(np.mean(np.log(x))))
    inv = x_ref / x  # 1/x in units of 1/x_ref
    y = np.log(e)
    lo, hi = np.array([-np.inf, 0.0]), np.array([np.inf, np.inf])

    def solve(g):
        return _box_lstsq(np.column_stack([np.ones_like(inv), np.log(inv + g)]), y, lo, hi)

    # gamma~ = gamma * x_ref on a log scale from far below to far above the range of 1/x~
    lg_lo, lg_hi = math.log(inv.min() * 1e-6), math.log(inv.max() * 1e3)
    t, v = _minimize_1d(lambda t: solve(math.exp(t))[0], lg_lo, lg_hi, n_grid=61)
    g = math.exp(t)
    if solve(0.0)[0] <= v:
        g = 0.0
    cost, (lb, c) = solve(g)
    at_bound = []
    if g == 0.0 or t <= lg_lo + 1e-9:
        at_bound.append("gamma")
    if t >= lg_hi - 1e-9:
        at_bound.append("gamma")
    if c <= 1e-12:
        at_bound.append("c")
    params = {"beta": math.exp(lb + c * math.log(x_ref)), "c": float(c), "gamma": g / x_ref}
    fit = LawFit("M3", params, int(x.size), float("nan"), math.sqrt(cost / x.size), at_bound, x_ref=x_ref)
    fit.rmse_log = fit.rmse_log_on(x, e)
    return fit


def _law_name(name: str) -> str:
    canon = {n.lower(): n for n in LAWS}
    if name.lower() not in canon:
        raise ValueError(f"unknown law {name!r}; choose from {', '.join(LAWS)}")
    return canon[name.lower()]


def fit_law(name: str, x: Any, e: Any, *, e0: float | None = None, **kw: Any) -> LawFit | M4Fit | PowerLawFit:
    """Fit the law ``name`` (one of :data:`LAWS`) to errors ``e`` at ``x``.

    ``e0`` (random-guess error) is passed to M4 only.  Extra keywords go to the law's fitter
    (:func:`fit_power_law` defaults to ``n_bootstrap=0`` here).  Every result has ``predict``,
    ``params``, ``at_bound``, ``rmse_log`` and ``rmse_log_on``.
    """
    law = _law_name(name)
    if law == "power_law":
        return fit_power_law(x, e, **({"n_bootstrap": 0} | kw))
    if law == "M4":
        return fit_m4(x, e, e0, **kw)
    if kw:
        raise ValueError(f"{law} takes no options; got {sorted(kw)}")
    return {"M1": fit_m1, "M2": fit_m2, "M3": fit_m3}[law](x, e)


# --------------------------------------------------------------------------
# extrapolation
# --------------------------------------------------------------------------
def extrapolation_check(
    x: Any,
    e: Any,
    cut: float,
    *,
    e0: float | None = None,
    fitters: Iterable[str] = ("power_law", "m4"),
    frontier: bool = True,
    score: str = "frontier",
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on ``x < cut``, predict ``x >= cut``, report the extrapolation error.

    Fit points (``frontier=True``, the default): the Pareto frontier of *all* runs, below the
    cut (frontier membership of a point below the cut does not depend on points above it, so no
    test information leaks into the fit); ``frontier=False`` fits all runs below the cut.

    Scored points (``score``): ``"all"``: every run at or above the cut, as the M4 paper scores
    held-out points of a learning curve; ``"frontier"`` (default): only the frontier runs at or
    above the cut, i.e. those that set a new running minimum.  On a single noisy curve use
    ``"all"``: the filter can reverse which law looks better (a law that keeps falling is rewarded
    on the few record-setting points and not penalised on the rest).  The default stays
    ``"frontier"`` because :func:`vitscale.analysis.analyze` passes whole sweeps, whose dominated
    runs (worse hyper-parameters) no law of the best reachable error is meant to predict.

    ``fitters``: names from :data:`LAWS` (``"m4"`` is an alias of ``"M4"``); ``e0`` (random-guess
    error) is required for M4.

    Returns a dict with ``cut``, ``score``, ``train_x``/``train_e``, ``test_x``/``test_e`` (lists)
    and ``results[name]`` holding ``params`` (``as_dict()`` of the fit), ``pred`` (predictions at
    ``test_x``), ``rmse_log`` (RMSE of ``log e``) and ``mare`` (mean |pred - e| / e) over the test
    points, and ``fit`` (the fit object itself; drop it before ``json.dumps``).
    """
    x, e = _validate(x, e, x_name="x", min_points=None)
    fitters = tuple(fitters)
    for name in fitters:
        try:
            _law_name(name)
        except ValueError:
            raise ValueError(f"unknown fitter {name!r}; choose from {', '.join(LAWS)} (or 'm4')") from None
    if score not in ("all", "frontier"):
        raise ValueError(f"score must be 'all' or 'frontier', got {score!r}")
    if any(_law_name(n) == "M4" for n in fitters) and e0 is None:
        raise ValueError("extrapolation_check with the 'm4' fitter needs e0 (random-guess error)")
    keep = pareto_frontier(x, e) if frontier else np.ones(x.shape[0], dtype=bool)
    train = keep & (x < cut)
    scored = pareto_frontier(x, e) if score == "frontier" else np.ones(x.shape[0], dtype=bool)
    test = scored & (x >= cut)
    if train.sum() < MIN_POINTS:
        raise ValueError(
            f"too few training points below cut={cut:g}: got {int(train.sum())}, need at least {MIN_POINTS}"
        )
    if test.sum() == 0:
        raise ValueError(f"no evaluation points at or above cut={cut:g}")
    xt, et = x[train], e[train]
    order = np.argsort(x[test], kind="stable")
    xv, ev = x[test][order], e[test][order]

    results: dict[str, Any] = {}
    for name in fitters:
        law = _law_name(name)
        if law == "power_law":
            fit: LawFit | M4Fit | PowerLawFit = fit_power_law(xt, et, n_bootstrap=n_bootstrap, seed=seed)
        elif law == "M4":
            fit = fit_m4(xt, et, float(e0), n_bootstrap=n_bootstrap, seed=seed)
        else:
            fit = fit_law(law, xt, et)
        pred = np.asarray(fit.predict(xv), dtype=float)
        results[name] = {
            "params": fit.as_dict(),
            "pred": pred.tolist(),
            "rmse_log": rmse_log(pred, ev),
            "mare": float(np.mean(np.abs(pred - ev) / ev)),
            "fit": fit,
        }
    return {
        "cut": float(cut),
        "frontier": bool(frontier),
        "score": score,
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "train_x": xt.tolist(),
        "train_e": et.tolist(),
        "test_x": xv.tolist(),
        "test_e": ev.tolist(),
        "results": results,
    }
