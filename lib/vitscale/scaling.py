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
  ``(log a~, log b, c, log d~)`` with ``c`` bounded to ``[0, min(E))``.
  Uncertainty: percentile bootstrap over points resampled with replacement.

* **M4** (Alabdulmohsin, Neyshabur & Zhai, "Revisiting Neural Scaling Laws
  in Language and Vision", NeurIPS 2022, arXiv:2209.06640)::

      (e_x - e_inf) / (e_0 - e_x) ** alpha = beta * x ** c,   c <= 0, alpha >= 0

  ``e_0`` is the error of a random guess (e.g. ``1 - 1/num_classes``) and is
  held fixed here; ``e_inf`` in ``[0, min(e))`` is the irreducible error.
  The fitting objective follows the authors' reference implementation
  (google-research/revisiting_neural_scaling_laws, ``methods/m4.py``): the
  squared loss in the log domain of both sides of the law::

      min sum_i [ log(e_i - e_inf) - alpha*log(e_0 - e_i) - log(beta) - c*log(x_i) ]^2

  For fixed ``e_inf`` this is a linear least-squares problem in
  ``(log beta, c, alpha)`` (with the bounds ``c <= 0``, ``alpha >= 0``), so we
  profile it out with ``scipy.optimize.lsq_linear`` and optimise the 1-D
  profile over ``e_inf`` (grid + bounded Brent refinement).  The reference
  code alternates least squares with gradient / Newton steps on
  ``e_inf`` (and optionally ``e_0``); the minimiser is the same.  Unlike the
  reference code we do not force ``log beta >= 0``.  Prediction solves the
  implicit law for ``e_x`` by vectorised bisection (it is monotone in ``e_x``
  on ``(e_inf, e_0)``).

Validation metric (both estimators, and :func:`extrapolation_check`): RMSE
of ``log(error)``, as in the M4 paper, plus the mean absolute relative error.
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
]

#: Both estimators have four free parameters.
MIN_POINTS = 4


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
    ``log E_pred - log E`` on the fitted points.
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
    lo = np.array([-60.0, math.log(1e-4), 0.0, math.log(Cn.min() * 1e-6)])
    hi = np.array([60.0, math.log(10.0), emin * (1.0 - 1e-9), math.log(Cn.max() * 10.0)])
    return lo, hi


def _pl_initial_grid(Cn: np.ndarray, E: np.ndarray, lo, hi) -> list[np.ndarray]:
    emin = float(E.min())
    starts = []
    for b in (0.05, 0.15, 0.3, 0.6, 1.2):
        for d in (Cn.min() * 1e-4, Cn.min(), math.sqrt(Cn.min() * Cn.max()), Cn.max()):
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


_M4_NAMES = ("e_inf", "beta", "c", "alpha")


@dataclass
class M4Fit:
    """Result of :func:`fit_m4`: ``(e - e_inf)/(e0 - e)^alpha = beta x^c``.

    ``rmse_log_objective`` is the RMS residual of the fitting objective (log
    of both sides); ``rmse_log`` is the RMS of ``log e_pred - log e`` on the
    fitted points.
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

    def predict(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return m4_solve(x / self.x_ref, e_inf=self.e_inf, beta=self.beta_n, c=self.c, alpha=self.alpha, e0=self.e0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "law": "(e - e_inf) / (e0 - e)^alpha = beta * x^c",
            "e_inf": self.e_inf,
            "beta": self.beta,
            "c": self.c,
            "alpha": self.alpha,
            "e0": self.e0,
            "n": self.n,
            "rmse_log": self.rmse_log,
            "rmse_log_objective": self.rmse_log_objective,
            "ci_level": self.ci_level,
            "n_bootstrap": self.n_bootstrap,
            "intervals": {k: [float(v[0]), float(v[1])] for k, v in self.intervals.items()},
        }


def _m4_profile(logx: np.ndarray, e: np.ndarray, e0: float, e_inf: float):
    """Best (log beta, c, alpha) and residual norm^2 for a fixed e_inf."""
    A = np.column_stack([np.ones_like(logx), logx, np.log(e0 - e)])
    y = np.log(e - e_inf)
    r = optimize.lsq_linear(
        A,
        y,
        bounds=([-np.inf, -np.inf, 0.0], [np.inf, 0.0, np.inf]),
        method="bvls",
        tol=1e-14,
    )
    res = A @ r.x - y
    return float(res @ res), r.x


def _m4_core(logx: np.ndarray, e: np.ndarray, e0: float):
    emin = float(e.min())

    # e_inf = emin * (1 - s), s in (0, 1]; search over log10 s
    def obj(ls):
        return _m4_profile(logx, e, e0, emin * (1.0 - 10.0**ls))[0]

    grid = np.linspace(-8.0, 0.0, 49)
    vals = np.array([obj(g) for g in grid])
    k = int(np.argmin(vals))
    best_ls, best_v = grid[k], vals[k]
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    if b > a:
        r = optimize.minimize_scalar(obj, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
        if r.fun < best_v:
            best_ls, best_v = float(r.x), float(r.fun)
    e_inf = emin * (1.0 - 10.0**best_ls)
    cost, (log_beta, c, alpha) = _m4_profile(logx, e, e0, e_inf)
    return e_inf, log_beta, float(c), float(alpha), cost


def fit_m4(
    x: Any,
    e: Any,
    e0: float,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    ci_level: float = 0.95,
) -> M4Fit:
    """Fit the M4 estimator of Alabdulmohsin et al. (2022) (module docstring).

    ``e0`` is the random-guess error (fixed), e.g. ``1 - 1/num_classes``; all
    errors must lie strictly below it.  Bootstrap intervals as in
    :func:`fit_power_law` when ``n_bootstrap > 0``.
    """
    x, e = _validate(x, e, x_name="x", what="the M4 fit")
    _check_level(ci_level)
    e0 = float(e0)
    if not np.isfinite(e0) or e0 <= 0:
        raise ValueError(f"e0 (random-guess error) must be a positive finite number, got {e0}")
    if np.any(e >= e0):
        raise ValueError(
            f"all errors must be below e0={e0:g} (the random-guess error); "
            f"got {int(np.sum(e >= e0))} value(s) >= e0 (max {e.max():g})"
        )
    if np.unique(x).shape[0] < MIN_POINTS:
        raise ValueError(
            f"too few distinct x values for the M4 fit: got {np.unique(x).shape[0]}, need at least {MIN_POINTS}"
        )
    x_ref = float(np.exp(np.mean(np.log(x))))
    logx = np.log(x / x_ref)
    e_inf, lb, c, alpha, cost = _m4_core(logx, e, e0)
    beta_n = math.exp(lb)

    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(int(n_bootstrap)):
        idx = _bootstrap_indices(rng, x)
        if idx is None:
            continue
        ei, lbb, cb, ab, _ = _m4_core(logx[idx], e[idx], e0)
        boot.append([ei, math.exp(lbb - cb * math.log(x_ref)), cb, ab])
    boot_arr = np.array(boot, dtype=float).reshape(-1, 4)
    intervals = {k: _interval(boot_arr[:, i], ci_level) for i, k in enumerate(_M4_NAMES)} if boot_arr.shape[0] else {}

    fit = M4Fit(
        e_inf=float(e_inf),
        beta=float(math.exp(lb - c * math.log(x_ref))),
        c=c,
        alpha=alpha,
        e0=e0,
        n=int(x.shape[0]),
        rmse_log=float("nan"),
        rmse_log_objective=math.sqrt(cost / x.shape[0]),
        ci_level=ci_level,
        intervals=intervals,
        n_bootstrap=int(boot_arr.shape[0]),
        x_ref=x_ref,
        beta_n=beta_n,
    )
    fit.rmse_log = float(np.sqrt(np.mean((np.log(fit.predict(x)) - np.log(e)) ** 2)))
    return fit


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
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on ``x < cut``, predict ``x >= cut``, report the extrapolation error.

    Point selection (``frontier=True``, the default): compute the Pareto
    frontier of *all* runs once; fit on the frontier runs with ``x < cut`` and
    evaluate on the frontier runs with ``x >= cut``.  So a run above the cut
    that is beaten by a cheaper run (even one below the cut) is not a target:
    both laws model the best error reachable at a given compute, which is
    monotone.  Frontier membership of a training point does not depend on
    points above the cut, so no test information leaks into the fit.  With
    ``frontier=False`` all runs are used on both sides.

    ``e0`` (random-guess error) is required for ``"m4"``.

    Returns a dict with ``cut``, ``train_x``/``train_e``, ``test_x``/``test_e``
    (lists) and ``results[name]`` holding ``params`` (``as_dict()`` of the
    fit), ``pred`` (predictions at ``test_x``), ``rmse_log`` (RMSE of
    ``log e``) and ``mare`` (mean |pred - e| / e) over the test points, and
    ``fit`` (the fit object itself; drop it before ``json.dumps``).
    """
    x, e = _validate(x, e, x_name="x", min_points=None)
    fitters = tuple(fitters)
    unknown = set(fitters) - {"power_law", "m4"}
    if unknown:
        raise ValueError(f"unknown fitter(s) {sorted(unknown)}; choose from 'power_law', 'm4'")
    if "m4" in fitters and e0 is None:
        raise ValueError("extrapolation_check with the 'm4' fitter needs e0 (random-guess error)")
    keep = pareto_frontier(x, e) if frontier else np.ones(x.shape[0], dtype=bool)
    train = keep & (x < cut)
    test = keep & (x >= cut)
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
        if name == "power_law":
            fit: PowerLawFit | M4Fit = fit_power_law(xt, et, n_bootstrap=n_bootstrap, seed=seed)
        else:
            fit = fit_m4(xt, et, float(e0), n_bootstrap=n_bootstrap, seed=seed)
        pred = np.asarray(fit.predict(xv), dtype=float)
        results[name] = {
            "params": fit.as_dict(),
            "pred": pred.tolist(),
            "rmse_log": float(np.sqrt(np.mean((np.log(pred) - np.log(ev)) ** 2))),
            "mare": float(np.mean(np.abs(pred - ev) / ev)),
            "fit": fit,
        }
    return {
        "cut": float(cut),
        "frontier": bool(frontier),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "train_x": xt.tolist(),
        "train_e": et.tolist(),
        "test_x": xv.tolist(),
        "test_e": ev.tolist(),
        "results": results,
    }
