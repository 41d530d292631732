"""M1-M4 (Alabdulmohsin, Neyshabur & Zhai 2022) and fit_law, the one interface to every law."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from vitscale.scaling.fitting import (
    LAWS,
    MIN_POINTS,
    bootstrap_indices,
    box_lstsq,
    can_bootstrap,
    check_level,
    error_margin,
    is_whole_sample,
    minimize_1d,
    percentile_interval,
    rmse_log,
    unresolved_names,
    validate_points,
)
from vitscale.scaling.frontier import PowerLawFit, fit_power_law


# --------------------------------------------------------------------------
# M4
# --------------------------------------------------------------------------
def m4_solve(x: Any, *, e_inf: float, beta: float, c: float, alpha: float, e0: float) -> np.ndarray:
    """Solve `(e - e_inf)/(e0 - e)^alpha = beta x^c` for `e` (vectorised).

    Writes `e = e_inf + B*sigmoid(u)` with `B = e0 - e_inf` and bisects on
    `u` (the left side is increasing in `u`), which keeps full relative
    precision of `e - e_inf` even when it is tiny.  `alpha == 0` is the
    explicit law `e = e_inf + beta x^c`.
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
    """Result of `fit_m4`: `(e - e_inf)/(e0 - e)^alpha = beta x^c`.

    `rmse_log_objective` is the RMS residual of the fitting objective (log
    of both sides); `rmse_log` is the RMS of `log e_pred - log e` on the
    fitted points.  `e0` is the fitted value (learned unless
    `learn_e0=False`), `e0_init` the random-guess error passed in.
    `at_bound` names the parameters left on a constraint (`e_inf` at 0
    or `min(e) - m`, `e0` at `max(e) + m` or its cap, `c` at 0,
    `alpha` at 0, `beta` at 1).
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
        """RMSE of log error of the prediction at `x` against `e`."""
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
    return box_lstsq(A, np.log(e - e_inf), np.array([lb_min, -np.inf, 0.0]), np.array([np.inf, 0.0, np.inf]))


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

    `start` (a previous optimum's (s, t)) replaces the grid by a local polish (bootstrap).
    Returns (e_inf, e0, log_beta, c, alpha, cost, at_bound, (s, t)).
    """
    m = error_margin(e)
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
            v = box_lstsq(A, y, np.array([lb_min, -np.inf, 0.0]), np.array([np.inf, 0.0, np.inf]))[1]
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
        s_best, _ = minimize_1d(lambda s: obj2((s, 0.0)), 0.0, 1.0)
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
    """Fit M4 as published by Alabdulmohsin et al. (2022): `e0` learned (module docstring).

    `e0` is the random-guess error, e.g. `1 - 1/num_classes`: all errors must lie below it; it
    is the value held fixed with `learn_e0=False` (None: no such check, and e0 must be learned).
    `beta_min` is the authors' `log(beta) >= 0` (in the units of `x`); None drops it.
    Bootstrap intervals as in `fit_power_law` when `n_bootstrap > 0`.
    """
    x, e = validate_points(x, e, x_name="x", what="the M4 fit")
    check_level(ci_level)
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
    for _ in range(int(n_bootstrap) if can_bootstrap(x) else 0):
        idx = bootstrap_indices(rng, x)
        if idx is None:
            continue
        if is_whole_sample(idx):  # the data itself: its fit is the estimate
            boot.append([e_inf, math.exp(lb), c, alpha, e0_fit])
            continue
        ei, e0b, lbb, cb, ab, *_ = _m4_core(logx[idx], e[idx], e0, learn_e0, e0_max, lb_min, start=st)
        boot.append([ei, math.exp(lbb), cb, ab, e0b])
    boot_arr = np.array(boot, dtype=float).reshape(-1, 5)
    names = _M4_NAMES if learn_e0 else _M4_NAMES[:4]
    intervals = (
        {k: percentile_interval(boot_arr[:, i], ci_level) for i, k in enumerate(names)} if boot_arr.shape[0] else {}
    )

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
        beta_n=_scale("M4", lb + c * math.log(x_ref), c),
        e0_init=e0,
        learn_e0=learn_e0,
        at_bound=at_bound,
        unresolved=unresolved_names(intervals, dict(zip(_M4_NAMES, (e_inf, math.exp(lb), c, alpha, e0_fit))))
        if intervals
        else list(names),
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
    """Result of `fit_m1`, `fit_m2` or `fit_m3` (laws in the module docstring).

    `params` holds the parameters in the units of `x` as passed; `rmse_log` is on the fitted
    points, `rmse_log_objective` the RMS residual of the fitting objective; `at_bound` names
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
        """RMSE of log error of the prediction at `x` against `e`."""
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


def _scale(law: str, log_beta: float, c: float) -> float:
    """exp(log_beta), a law's scale in the units of x; a clear error where it is beyond float range, which
    happens only when the exponent is so steep that the points do not determine the law."""
    if log_beta > 700.0:  # exp(709.8) is the largest float64
        raise ValueError(
            f"{law}'s fit is degenerate: exponent c = {c:.4g} puts its scale at e^{log_beta:.0f}, beyond "
            "float range; these points do not determine the law"
        )
    return math.exp(log_beta)


def _check_distinct(x: np.ndarray, what: str, k: int) -> None:
    if np.unique(x).shape[0] < k:
        raise ValueError(f"too few distinct x values for {what}: got {np.unique(x).shape[0]}, need at least {k}")


def fit_m1(x: Any, e: Any) -> LawFit:
    """Fit M1, `e = beta x^c`: ordinary least squares of `log e` on `log x` (c unconstrained)."""
    x, e = validate_points(x, e, x_name="x", what="the M1 fit", min_points=2)
    _check_distinct(x, "the M1 fit", 2)
    A = np.column_stack([np.ones_like(x), np.log(x)])
    cost, (lb, c) = box_lstsq(A, np.log(e), np.full(2, -np.inf), np.full(2, np.inf))
    fit = LawFit("M1", {"beta": math.exp(lb), "c": float(c)}, int(x.size), float("nan"), math.sqrt(cost / x.size))
    fit.rmse_log = fit.rmse_log_on(x, e)
    return fit


def fit_m2(x: Any, e: Any) -> LawFit:
    """Fit M2, `e = e_inf + beta x^c`: least squares of `log(e - e_inf)` on `log x`, e_inf profiled."""
    x, e = validate_points(x, e, x_name="x", what="the M2 fit", min_points=3)
    _check_distinct(x, "the M2 fit", 3)
    logx = np.log(x)
    x_ref = float(np.exp(np.mean(logx)))
    A = np.column_stack([np.ones_like(x), logx - math.log(x_ref)])
    inf_hi = float(e.min()) - error_margin(e)
    free = (np.full(2, -np.inf), np.full(2, np.inf))

    def obj(s):
        return box_lstsq(A, np.log(e - inf_hi * s), *free)[0]

    s, _ = minimize_1d(obj, 0.0, 1.0)
    cost, (lb, c) = box_lstsq(A, np.log(e - inf_hi * s), *free)
    at_bound = ["e_inf"] if s <= 1e-7 or s >= 1.0 - 1e-7 else []
    params = {"e_inf": inf_hi * s, "beta": _scale("M2", lb - c * math.log(x_ref), c), "c": float(c)}
    fit = LawFit("M2", params, int(x.size), float("nan"), math.sqrt(cost / x.size), at_bound)
    fit.rmse_log = fit.rmse_log_on(x, e)
    return fit


def fit_m3(x: Any, e: Any) -> LawFit:
    """Fit M3, `e = beta (1/x + gamma)^c` with `c, gamma >= 0`: least squares in log space, gamma profiled."""
    x, e = validate_points(x, e, x_name="x", what="the M3 fit", min_points=3)
    _check_distinct(x, "the M3 fit", 3)
    x_ref = float(np.exp(np.mean(np.log(x))))
    inv = x_ref / x  # 1/x in units of 1/x_ref
    y = np.log(e)
    lo, hi = np.array([-np.inf, 0.0]), np.array([np.inf, np.inf])

    def solve(g):
        return box_lstsq(np.column_stack([np.ones_like(inv), np.log(inv + g)]), y, lo, hi)

    # gamma~ = gamma * x_ref on a log scale from far below to far above the range of 1/x~
    lg_lo, lg_hi = math.log(inv.min() * 1e-6), math.log(inv.max() * 1e3)
    t, v = minimize_1d(lambda t: solve(math.exp(t))[0], lg_lo, lg_hi, n_grid=61)
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
    params = {"beta": _scale("M3", lb + c * math.log(x_ref), c), "c": float(c), "gamma": g / x_ref}
    fit = LawFit("M3", params, int(x.size), float("nan"), math.sqrt(cost / x.size), at_bound, x_ref=x_ref)
    fit.rmse_log = fit.rmse_log_on(x, e)
    return fit


def law_name(name: str) -> str:
    canon = {n.lower(): n for n in LAWS}
    if name.lower() not in canon:
        raise ValueError(f"unknown law {name!r}; choose from {', '.join(LAWS)}")
    return canon[name.lower()]


def fit_law(name: str, x: Any, e: Any, *, e0: float | None = None, **kw: Any) -> LawFit | M4Fit | PowerLawFit:
    """Fit the law `name` (one of `LAWS`) to errors `e` at `x`.

    `e0` (random-guess error) is passed to M4 only.  Extra keywords go to the law's fitter
    (`fit_power_law` defaults to `n_bootstrap=0` here).  Every result has `predict`,
    `params`, `at_bound`, `rmse_log` and `rmse_log_on`.
    """
    law = law_name(name)
    if law == "power_law":
        return fit_power_law(x, e, **({"n_bootstrap": 0} | kw))
    if law == "M4":
        return fit_m4(x, e, e0, **kw)
    if kw:
        raise ValueError(f"{law} takes no options; got {sorted(kw)}")
    return {"M1": fit_m1, "M2": fit_m2, "M3": fit_m3}[law](x, e)
