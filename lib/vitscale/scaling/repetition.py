"""Repeated data: the data-constrained law of Muennighoff et al. 2023 ("Scaling data-constrained language
models", NeurIPS 2023; github.com/huggingface/datablations, README "Parametric Fit"):

    L(N, D, U) = E + A / N'^alpha + B / D'^beta
    D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)),   R_D = D / U_D - 1   (U_D = U, the unique data)
    N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)),   R_N = N / U_N - 1,  U_N = min(N, N*(U))

where N*(U) is the compute-optimal size whose optimal data is U (closed form of the base law). R_D* is how
many repetitions are worth something: the value of repeated data decays as exp(-R/R*), and a dataset
repeated for ever is worth U (1 + R_D*) fresh items. R_N* does the same for parameters beyond N*(U).

The authors fit R_D*, R_N* by L-BFGS on the sum of Huber(delta 1e-3) losses of log loss, with the base
constants (A, B, E, alpha, beta) held at their Chinchilla fit; this module does the same (scipy), and
gives R_D* a profile interval, because these runs do not pin it down (the objective is nearly flat along a
valley of (R_D*, R_N*)). The profile threshold is the likelihood-ratio one for a Laplace error model,
which the Huber loss is when residuals exceed delta (Huber(r) = delta |r| - delta^2 / 2): with n points
and objective f, the scale is f / (delta n), and 2 n (f - f_min) / f_min is chi-square(1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import optimize, stats

#: Huber threshold on log loss (the authors' and Hoffmann's).
HUBER_DELTA = 1e-3

#: The published constants (README "Parametric Fit" of huggingface/datablations): a, b, e are log A,
#: log B, log E; R_D*, R_N* fitted on their 182 runs with the others fixed, reaching `objective`.
PUBLISHED = {
    "a": 6.255414,
    "b": 7.3049974,
    "e": 0.6254804,
    "alpha": 0.3526596,
    "beta": 0.3526596,
    "rd_star": 15.387756,
    "rn_star": 5.309743,
    "objective": 0.0158259,
}

#: The range of R* searched (repetitions): below 0.1 repeated data is worth nothing, above 1e4 as much as fresh.
STAR_RANGE = (0.1, 1e4)

#: The choices of the analysis parameter `repetition`.
REPETITION = ("none", "muennighoff")


@dataclass(frozen=True)
class Base:
    """The base law E + A / N^alpha + B / D^beta whose N and D the repetition terms replace."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def published(cls) -> Base:
        p = PUBLISHED
        return cls(np.exp(p["e"]), np.exp(p["a"]), np.exp(p["b"]), p["alpha"], p["beta"])

    def optimal_params(self, D: Any) -> np.ndarray:
        """N*(D): the compute-optimal size whose optimal data is D (N* / D* = G^2 (C/k)^(a-b), solved for D)."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return (np.asarray(D, dtype=float) * G) ** (self.beta / self.alpha) * G


def effective(unique: Any, repeats: Any, star: float) -> np.ndarray:
    """U + U R* (1 - exp(-R / R*)): what U unique items seen R extra times are worth in fresh items."""
    u, r = np.asarray(unique, dtype=float), np.maximum(np.asarray(repeats, dtype=float), 0.0)
    return u + u * star * (1.0 - np.exp(-r / star))


def effective_data(D: Any, U: Any, rd_star: float) -> np.ndarray:
    """D' for D items seen of U unique; D itself where U is unknown (NaN) or D <= U."""
    D, U = np.broadcast_arrays(np.asarray(D, dtype=float), np.asarray(U, dtype=float))
    known = np.isfinite(U) & (U > 0)
    u = np.where(known, np.minimum(U, D), D)
    return np.where(known, effective(u, D / u - 1.0, rd_star), D)


def effective_params(base: Base, N: Any, U: Any, rn_star: float | None) -> np.ndarray:
    """N' for N parameters trained on U unique items (N itself without R_N* or where U is unknown)."""
    N = np.asarray(N, dtype=float)
    U = np.broadcast_to(np.asarray(U, dtype=float), N.shape)
    if rn_star is None:
        return N
    known = np.isfinite(U) & (U > 0)
    un = np.where(known, np.minimum(N, base.optimal_params(np.where(known, U, 1.0))), N)
    return effective(un, N / un - 1.0, rn_star)


def predict(base: Base, N: Any, D: Any, U: Any, rd_star: float, rn_star: float | None = None) -> np.ndarray:
    """The data-constrained law's loss (error) at N parameters, D items seen, U unique."""
    n_eff = effective_params(base, N, U, rn_star)
    d_eff = effective_data(D, U, rd_star)
    return base.E + base.A * n_eff**-base.alpha + base.B * d_eff**-base.beta


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


class Observed(NamedTuple):
    """Runs as the data-constrained law sees them: N parameters, D items seen out of U unique, and
    the loss (error) each reached; the fits' one argument for the data."""

    N: Any
    D: Any
    U: Any
    loss: Any


def objective(base: Base, runs: Observed, rd_star: float, rn_star: float | None = None) -> float:
    """The authors' objective: sum of Huber(1e-3) of log predicted minus log observed loss."""
    pred = predict(base, runs.N, runs.D, runs.U, rd_star, rn_star)
    return float(huber(np.log(pred) - np.log(np.asarray(runs.loss, dtype=float))).sum())


@dataclass
class StarFit:
    """R_D* (and R_N* when fitted) with the objective reached, and R_D*'s profile interval."""

    rd_star: float
    rn_star: float | None
    objective: float
    n_points: int
    interval: tuple[float, float] | None = None
    open_above: bool = False  # the interval reaches the top of STAR_RANGE: no upper limit in reach
    level: float = 0.9

    def as_dict(self) -> dict[str, Any]:
        return {
            "R_D*": self.rd_star,
            "R_N*": self.rn_star,
            "objective": self.objective,
            "n_points": self.n_points,
            "R_D*_interval": list(self.interval) if self.interval else None,
            "R_D*_open_above": self.open_above,
            "level": self.level,
        }


def _minimise(fun, starts: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The best L-BFGS-B minimum of `fun` over log R* from `starts` (bounded by STAR_RANGE)."""
    bounds = [tuple(np.log(STAR_RANGE))] * len(starts[0])
    best = (starts[0], np.inf)
    for s in starts:
        r = optimize.minimize(fun, s, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-15, "gtol": 1e-12})
        if r.fun < best[1]:
            best = (r.x, float(r.fun))
    return best


def fit_stars(base: Base, runs: Observed, *, fit_rn: bool = True, level: float = 0.9) -> StarFit:
    """Fit R_D* (and R_N* when `fit_rn`) with the base law held fixed, from a grid of starts; then
    R_D*'s profile interval at `level` (see the module docstring)."""
    data = Observed(*(np.asarray(v, dtype=float) for v in runs))
    grid = np.log([1.0, 15.0, 300.0])

    def fun(t):
        return objective(base, data, float(np.exp(t[0])), float(np.exp(t[1])) if fit_rn else None)

    starts = [np.array([g, h]) for g in grid for h in grid] if fit_rn else [np.array([g, 0.0]) for g in grid]
    x, f = _minimise(fun, starts)
    rd, rn = float(np.exp(x[0])), float(np.exp(x[1])) if fit_rn else None
    out = StarFit(rd, rn, f, len(data[0]), level=level)
    out.interval, out.open_above = profile_interval(base, data, f, fit_rn=fit_rn, level=level)
    return out


def lr_limit(f_min: float, n: int, level: float) -> float:
    """The profile objective's likelihood-ratio threshold at `level` for one constant, n points (module docstring)."""
    return f_min * (1.0 + stats.chi2.ppf(level, 1) / (2.0 * n))


def profile_interval(base: Base, data, f_min: float, *, fit_rn: bool, level: float, n_grid: int = 33):
    """The R_D* whose profile objective (R_N* re-fitted at each) stays within the likelihood-ratio
    threshold f_min (1 + chi2_level(1) / (2 n)); returns ((lo, hi), reaches the top of STAR_RANGE)."""
    limit = lr_limit(f_min, len(data[0]), level)
    grid = np.geomspace(*STAR_RANGE, n_grid)
    prof = np.array([_profile_at(base, data, rd, fit_rn) for rd in grid])
    inside = grid[prof <= limit]
    if not inside.size:
        return None, False
    return (float(inside.min()), float(inside.max())), bool(prof[-1] <= limit)


def _profile_at(base: Base, data, rd: float, fit_rn: bool) -> float:
    if not fit_rn:
        return objective(base, data, rd, None)
    r = optimize.minimize_scalar(
        lambda t: objective(base, data, rd, float(np.exp(t))), bounds=tuple(np.log(STAR_RANGE)), method="bounded"
    )
    return float(r.fun)
