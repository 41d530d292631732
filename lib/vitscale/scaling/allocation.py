"""Approach 3 of Hoffmann et al. (2022), as Besiroglu et al. (2024) replicate it: the joint law

    E(N, D) = E + A / N^alpha + B / D^beta

fitted by L-BFGS on a Huber loss (delta 1e-3) of log error, in the log-sum-exp parameterisation
`log E(N, D) = LSE(a - alpha log N, b - beta log D, e)` with A = e^a, B = e^b, E = e^e, from a grid
of starting points (the best objective wins), with percentile-bootstrap intervals. For compute
C = k N D the optimum is closed-form: N* = G (C/k)^a, D* = (C/k)^b / G, a = beta/(alpha+beta),
b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

import vitscale.scaling.backtest as backtest  # modules, not the package: scaling/__init__ imports this one
import vitscale.scaling.repetition as repetition
from vitscale.scaling.fitting import Bootstrap, check_level, percentile_interval, unresolved_names, validate_points
from vitscale.scaling.isoflop import envelope, isoflop
from vitscale.scaling.table import Points

#: Huber threshold on log error (the replication's and Hoffmann's).
HUBER_DELTA = 1e-3

#: Hoffmann et al.'s grid of starts for (a, b, e, alpha, beta): 6 x 6 x 5 x 5 x 5 = 4,500 points.
HOFFMANN_GRID = (
    np.arange(0.0, 30.0, 5.0),
    np.arange(0.0, 30.0, 5.0),
    np.arange(-1.0, 1.5, 0.5),
    np.arange(0.0, 2.5, 0.5),
    np.arange(0.0, 2.5, 0.5),
)

#: Exponents above this are no power law the data resolve (published ones lie in 0.05-0.7): a term with
#: such an exponent vanishes within a fraction of the range of N (or D) it is fitted on.
EXPONENT_MAX = 2.0

#: The constants of the law and what is derived from them, in report order.
NAMES = ("E", "A", "B", "alpha", "beta", "a")


def _objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, loge: np.ndarray, delta: float):
    """Sum of Huber(delta) of log-prediction minus log error, and its gradient in (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * logn, b - beta * logd
    m = np.maximum(np.maximum(t1, t2), e)
    x1, x2, x3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    s = x1 + x2 + x3
    r = m + np.log(s) - loge
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    g = np.where(small, r, delta * np.sign(r)) / s  # d loss / d r, over the softmax denominator
    w1, w2 = g * x1, g * x2  # d r / d (each term) is its softmax weight
    grad = np.array([w1.sum(), w2.sum(), (g * x3).sum(), -(w1 @ logn), -(w2 @ logd)])
    return float(loss), grad


def _screen(starts: np.ndarray, logn, logd, loge, delta: float) -> np.ndarray:
    """The objective at many starting points at once (rows of `starts`)."""
    a, b, e, al, be = (starts[:, i : i + 1] for i in range(5))
    t = np.stack(np.broadcast_arrays(a - al * logn, b - be * logd, e + 0 * logn))
    m = t.max(axis=0)
    r = m + np.log(np.exp(t - m).sum(axis=0)) - loge
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(axis=1)


#: L-BFGS stopping rules: the objective is ~delta x sum |residual|, so scipy's defaults (gtol 1e-5)
#: stop at once on a bootstrap resample started from the full fit; these let it reach the optimum.
_LBFGS_OPTIONS = {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000}


def _lbfgs(theta0, data, delta) -> tuple[np.ndarray, float]:
    r = optimize.minimize(_objective, theta0, args=(*data, delta), jac=True, method="L-BFGS-B", options=_LBFGS_OPTIONS)
    return r.x, float(r.fun)


def _best_of(starts, data, delta) -> tuple[np.ndarray, float]:
    best = (np.asarray(starts[0], float), np.inf)
    for s in starts:
        x, f = _lbfgs(np.asarray(s, float), data, delta)
        if np.all(np.isfinite(x)) and f < best[1]:
            best = (x, f)
    return best


def _theta_to_params(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(t) for t in theta)
    return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta, "a": beta / (alpha + beta)}


def optimum(C: Any, *, A: float, B: float, alpha: float, beta: float, k: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form compute-optimal (N*, D*) of E + A/N^alpha + B/D^beta under C = k N D."""
    c = np.asarray(C, dtype=float) / k
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    n = G * c ** (beta / (alpha + beta))
    return n, c / n


@dataclass
class JointFit:
    """The fitted joint law; `k` relates compute to N and D (C = k N D). `samples` holds one row of
    (E, A, B, alpha, beta) per bootstrap fit; `intervals` the percentile interval of each name in NAMES."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    k: float
    objective: float
    n_points: int
    n_range: tuple[float, float]
    d_range: tuple[float, float]
    ci_level: float = 0.9
    samples: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: With repeated data modelled (`fit_repeated`): D in the law is the effective data of
    #: `repetition.effective_data` at this R_D*, and `rd` holds R_D*'s profile interval.
    rd_star: float | None = None
    rd: dict[str, Any] = field(default_factory=dict)

    @property
    def a(self) -> float:
        """Allocation exponent: N* grows as C^a."""
        return self.beta / (self.alpha + self.beta)

    def effective(self, D: Any, U: Any = None) -> np.ndarray:
        """The D the law reads: D itself, or with repeated data modelled and U (unique) given, D'."""
        if self.rd_star is None or U is None:
            return np.asarray(D, dtype=float)
        return repetition.effective_data(D, U, self.rd_star)

    def predict(self, N: Any, D: Any, U: Any = None) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), self.effective(D, U)
        return self.E + self.A * N**-self.alpha + self.B * D**-self.beta

    def predict_band(self, N: Any, D: Any, U: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The parameter interval of the prediction at each (N, D[, U]): percentiles of the bootstrap
        fits' predictions, widened to contain the prediction itself (a point without bootstrap)."""
        N, D = np.atleast_1d(np.asarray(N, dtype=float)), np.atleast_1d(self.effective(D, U))
        pred = self.predict(N, D)
        if not len(self.samples):
            return pred, pred
        E, A, B, al, be = (c[:, None] for c in self.samples.T)
        draws = E + A * N[None, :] ** -al + B * D[None, :] ** -be
        lo, hi = np.nanpercentile(draws, [50 * (1 - self.ci_level), 100 - 50 * (1 - self.ci_level)], axis=0)
        return np.minimum(lo, pred), np.maximum(hi, pred)

    @property
    def degenerate(self) -> list[str]:
        """The exponents (alpha, beta) beyond EXPONENT_MAX: their term is a step, not a power law, so the
        data do not determine the allocation between N and D."""
        return [name for name in ("alpha", "beta") if getattr(self, name) > EXPONENT_MAX]

    def predict_interval(self, N: float, D: float) -> tuple[float, float] | None:
        """The bootstrap interval of the predicted error at (N, D), or None without bootstrap fits."""
        if not len(self.samples):
            return None
        E, A, B, al, be = self.samples.T
        es = E + A * float(N) ** -al + B * float(D) ** -be
        return percentile_interval(es[np.isfinite(es)], self.ci_level)

    def optimum(self, C: Any) -> tuple[np.ndarray, np.ndarray]:
        """(N*, D*) at compute C."""
        return optimum(C, A=self.A, B=self.B, alpha=self.alpha, beta=self.beta, k=self.k)

    def plan(self, C: float, unique: float | None = None) -> dict[str, Any]:
        """N*, D*, D*/N* and the predicted error at compute C, each with its bootstrap (parameter) interval.
        With `unique` (a fixed dataset of that many items) the optimum is found numerically on the law with
        D' for D (`constrained_optimum`), and `epochs` says how often the plan repeats the dataset."""
        if unique is not None:
            return self._plan_constrained(float(C), float(unique))
        n, d = (float(v) for v in self.optimum(C))
        out = {"C": float(C), "N": n, "D": d, "D_per_N": d / n, "error": float(self.predict(n, d))}
        if len(self.samples):
            E, A, B, al, be = self.samples.T
            ns, ds = optimum(C, A=A, B=B, alpha=al, beta=be, k=self.k)
            es = E + A * ns**-al + B * ds**-be
            for key, v in (("N", ns), ("D", ds), ("D_per_N", ds / ns), ("error", es)):
                out[f"{key}_interval"] = percentile_interval(v[np.isfinite(v)], self.ci_level)
        out["extrapolates"] = bool(n > self.n_range[1] or d > self.d_range[1])
        out["determined"] = not self.degenerate
        return out

    def constrained_optimum(self, C: float, unique: float) -> tuple[float, float]:
        """(N*, D*) at compute C = k N D when only `unique` items exist: the minimum of the law with D'
        (repeated data worth less) along the IsoFLOP line, by bounded scalar search over log N."""
        n0, _ = self.optimum(C)
        rd = self.rd_star if self.rd_star is not None else repetition.PUBLISHED["rd_star"]

        def loss(t: float) -> float:
            n = math.exp(t)
            d_eff = repetition.effective_data(C / (self.k * n), unique, rd)
            return float(self.E + self.A * n**-self.alpha + self.B * d_eff**-self.beta)

        t0 = math.log(float(n0))
        r = optimize.minimize_scalar(loss, bounds=(t0 - 12.0, t0 + 12.0), method="bounded", options={"xatol": 1e-6})
        n = math.exp(float(r.x))
        return n, C / (self.k * n)

    def _plan_constrained(self, C: float, unique: float) -> dict[str, Any]:
        n, d = self.constrained_optimum(C, unique)
        rd = self.rd_star if self.rd_star is not None else repetition.PUBLISHED["rd_star"]
        err = float(self.E + self.A * n**-self.alpha + self.B * repetition.effective_data(d, unique, rd) ** -self.beta)
        out = {"C": C, "N": n, "D": d, "D_per_N": d / n, "error": err, "unique": unique, "epochs": d / unique}
        out["R_D*"], out["R_D*_source"] = rd, ("fitted" if self.rd_star is not None else "published")
        if len(self.samples):
            lo, hi = self.predict_band(n, repetition.effective_data(d, unique, rd))
            out["error_interval"] = (float(lo[0]), float(hi[0]))
        out["extrapolates"] = bool(n > self.n_range[1] or d > self.d_range[1])
        out["determined"] = not self.degenerate
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: float(getattr(self, k)) for k in NAMES},
            "k": self.k,
            "objective": self.objective,
            "n_points": self.n_points,
            "n_range": list(self.n_range),
            "d_range": list(self.d_range),
            "ci_level": self.ci_level,
            "n_bootstrap": int(len(self.samples)),
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "unresolved": sorted(
                set(unresolved_names(self.intervals, {k: float(getattr(self, k)) for k in self.intervals}))
                | set(self.degenerate)
                | ({"a"} if self.degenerate else set())
            ),
            "degenerate": self.degenerate,
            "R_D*": self.rd_star,
            "R_D*_profile": self.rd,
        }


def fit_joint(
    N: Any,
    D: Any,
    error: Any,
    *,
    k: float = 6.0,
    delta: float = HUBER_DELTA,
    grid: tuple | None = None,
    n_starts: int = 64,
    n_bootstrap: int = 100,
    ci_level: float = 0.9,
    seed: int = 0,
) -> JointFit:
    """Fit E + A/N^alpha + B/D^beta to (N, D, error) points (Approach 3).

    The objective is evaluated at every point of `grid` (one axis per a, b, e, alpha, beta; default
    Hoffmann's, its e axis widened below log(min error) so that small error floors, as classification
    errors have, are within reach); L-BFGS
    runs from the `n_starts` best of them (None: from all) and the lowest objective wins. Each
    bootstrap resample (points with replacement) starts from that winner and the two next-best
    local optima, so the intervals cost a few fits each, not the whole grid.
    """
    check_level(ci_level)
    N, err = validate_points(N, error, x_name="N (parameters)", what="the joint law (5 constants)", min_points=6)
    D, _ = validate_points(D, err, x_name="D (images seen)", min_points=6)
    with threadpool_limits(1):  # a 5-variable L-BFGS is 30x slower when BLAS threads contend
        return _fit_joint(N, D, err, k, delta, grid, n_starts, n_bootstrap, ci_level, seed)


def _fit_joint(N, D, err, k, delta, grid, n_starts, n_bootstrap, ci_level, seed) -> JointFit:
    data = (np.log(N), np.log(D), np.log(err))
    if grid is None:
        a, b, e, al, be = HOFFMANN_GRID
        e = np.union1d(e, np.log(err.min()) + np.array([-4.0, -2.0, -1.0, -0.3]))
        grid = (a, b, e, al, be)
    starts = np.array(list(itertools.product(*grid)), dtype=float)
    if n_starts is not None and n_starts < len(starts):
        starts = starts[np.argsort(_screen(starts, *data, delta), kind="stable")[:n_starts]]
    results = [_lbfgs(s, data, delta) for s in starts]
    order = np.argsort([f if np.isfinite(f) else np.inf for _, f in results])
    theta, fbest = results[order[0]]
    seeds = [theta] + [results[i][0] for i in order[1:3]]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(N), size=len(N))
        x, f = _best_of(seeds, tuple(v[idx] for v in data), delta)
        if np.isfinite(f):
            p = _theta_to_params(x)
            samples.append([p[n] for n in NAMES[:5]])
    samples_arr = np.array(samples, dtype=float).reshape(-1, 5)
    p = _theta_to_params(theta)
    intervals = {}
    if len(samples_arr):
        cols = dict(zip(NAMES[:5], samples_arr.T))
        cols["a"] = cols["beta"] / (cols["alpha"] + cols["beta"])
        intervals = {n: percentile_interval(v[np.isfinite(v)], ci_level) for n, v in cols.items()}
    return JointFit(
        E=p["E"],
        A=p["A"],
        B=p["B"],
        alpha=p["alpha"],
        beta=p["beta"],
        k=float(k),
        objective=fbest,
        n_points=len(N),
        n_range=(float(N.min()), float(N.max())),
        d_range=(float(D.min()), float(D.max())),
        ci_level=ci_level,
        samples=samples_arr,
        intervals=intervals,
    )


def fit_repeated(N: Any, D: Any, U: Any, error: Any, *, n_bootstrap: int = 100, level: float = 0.9,
                 profile: bool = True, **kw: Any) -> JointFit:  # fmt: skip
    """The joint law with repeated data modelled (Muennighoff et al. 2023, `repetition`): E + A/N^alpha +
    B/D'^beta, D' the effective data of D items seen out of U unique. R_D* is profiled: the joint law is
    fitted at each R_D* of a log grid over `repetition.STAR_RANGE`, the best refined by a bounded scalar
    search, and refitted there with `n_bootstrap` resamples (the parameter intervals hold R_D* fixed). R_D*'s
    interval (`rd`) is where the profile crosses the likelihood-ratio threshold (`repetition.lr_limit`) above
    the best objective (`profile` False: no interval, as backtests refit many times). R_N* (repeated
    parameters) is not fitted: it matters only beyond N*(U), the compute-optimal size for the whole
    dataset, which a study's sizes rarely reach."""
    N, D, U, err = (np.asarray(v, dtype=float) for v in (N, D, U, error))
    fast = {**kw, "n_bootstrap": 0, "n_starts": min(kw.get("n_starts", 64), 8)}

    def at(log_rd: float) -> float:
        return fit_joint(N, repetition.effective_data(D, U, math.exp(log_rd)), err, **fast).objective

    grid = np.log(np.geomspace(*repetition.STAR_RANGE, 13))
    prof = np.array([at(t) for t in grid])
    i = int(np.argmin(prof))
    r = optimize.minimize_scalar(at, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]), method="bounded")
    t_best, f_best = (float(r.x), float(r.fun)) if r.fun < prof[i] else (float(grid[i]), float(prof[i]))
    fit = fit_joint(N, repetition.effective_data(D, U, math.exp(t_best)), err, n_bootstrap=n_bootstrap,
                    ci_level=level, **kw)  # fmt: skip
    limit = repetition.lr_limit(f_best, N.size, level)
    fit.rd_star = math.exp(t_best)
    bounds = _profile_bounds(at, grid, prof, t_best, limit) if profile else {"interval": None}
    fit.rd = {"R_D*": fit.rd_star, **bounds, "level": level}
    fit.d_range = (float(D.min()), float(D.max()))
    return fit


def _profile_bounds(at, grid: np.ndarray, prof: np.ndarray, t_best: float, limit: float) -> dict[str, Any]:
    """Where the profile objective `at` (of log R_D*) crosses `limit` either side of `t_best` (brentq between
    the grid point beyond the crossing and the best); an end of the grid still inside is an open side."""
    bounds = {}
    for side, sel in (("lower", grid < t_best), ("upper", grid > t_best)):
        g, f = grid[sel], prof[sel]
        out = g[f > limit]
        if not out.size:
            bounds[side] = float(np.exp(g.min() if side == "lower" else g.max())) if g.size else math.exp(t_best)
            bounds[f"open_{'below' if side == 'lower' else 'above'}"] = True
            continue
        edge = out.max() if side == "lower" else out.min()
        t = optimize.brentq(lambda x: at(x) - limit, *sorted((edge, t_best)), xtol=0.02)
        bounds[side], bounds[f"open_{'below' if side == 'lower' else 'above'}"] = math.exp(t), False
    return {"interval": [bounds["lower"], bounds["upper"]], "open_below": bounds["open_below"],
            "open_above": bounds["open_above"]}  # fmt: skip


def unique_of(points: Points) -> np.ndarray:
    """Unique items behind each point (D / epochs); NaN where the study does not say."""
    if points.epochs is None:
        return np.full(len(points.N), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return points.D / points.epochs


BOOTSTRAP = Bootstrap()  # the joint law's parameter intervals: 100 resamples at 90%


def fit_points(points: Points, *, repetition_: str = "none", boot: Bootstrap = BOOTSTRAP, profile: bool = True,
               **kw: Any) -> JointFit:  # fmt: skip
    """The joint law on `points` (its intervals: `boot`), with repeated data modelled when `repetition_` is
    "muennighoff" (and the points say how many unique items each saw), else as if every item seen were fresh."""
    if repetition_ not in repetition.REPETITION:
        raise backtest.ForecastError("repetition", f"{repetition_!r} is not one of {', '.join(repetition.REPETITION)}")
    U = unique_of(points)
    if repetition_ == "muennighoff" and np.any(np.isfinite(U) & (points.D > U)):
        return fit_repeated(points.N, points.D, U, points.error, k=points.k, n_bootstrap=boot.samples,
                            level=boot.level, seed=boot.seed, profile=profile, **kw)  # fmt: skip
    return fit_joint(points.N, points.D, points.error, k=points.k, n_bootstrap=boot.samples, ci_level=boot.level,
                     seed=boot.seed, **kw)  # fmt: skip


def joint_law(points: Points, **fit_kw: Any) -> backtest.Law:
    """The joint law as a backtest sees it (every run fitted and scored; `fit_kw` go to `fit_points`)."""
    U = unique_of(points)

    def fit(mask: np.ndarray) -> JointFit:
        return fit_points(points.subset(mask), **fit_kw)

    def predict(model: JointFit, mask: np.ndarray):
        pred = np.atleast_1d(model.predict(points.N[mask], points.D[mask], U[mask]))
        lo, hi = model.predict_band(points.N[mask], points.D[mask], U[mask])
        return pred, lo, hi

    every = np.ones(len(points.N), dtype=bool)
    return backtest.Law("joint", MIN_JOINT, fit, predict, every, every)


#: The fewest runs the joint law is fitted on (five constants, and one more).
MIN_JOINT = 6


#: Runs that repeat their data more than this many epochs are left out of the fits by default: up to
#: about 4 epochs repeated data is worth nearly as much as fresh data (Muennighoff et al. 2023); 5
#: keeps a study whose longest runs just pass 4 (cpu_allocation: 4.3).
MAX_EPOCHS = 5.0


def _overlap(i1, i2) -> bool:
    return i1 is not None and i2 is not None and i1[0] <= i2[1] and i2[0] <= i1[1]


def agreement(estimates: dict[str, tuple[float | None, Any]]) -> str:
    """One sentence: do the approaches' allocation exponents agree (their intervals overlap)?"""
    have = {k: v for k, v in estimates.items() if v[0] is not None}
    if len(have) < 2:
        return "only " + (", ".join(have) or "no approach") + " gave an exponent: nothing to compare"
    text = ", ".join(f"{k} a = {v[0]:.3f}" for k, v in have.items())
    names = list(have)
    apart = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :] if not _overlap(have[x][1], have[y][1])]
    if not apart:
        return f"{text}: the intervals overlap, the approaches agree"
    return f"{text}: they disagree (" + "; ".join(f"{x} and {y} intervals do not overlap" for x, y in apart) + ")"


def _within_epochs(points: Points, max_epochs: float | None) -> tuple[np.ndarray, list[str]]:
    """Which points repeat their data at most `max_epochs` times (None: all), and a note when any are left out."""
    keep = np.ones(len(points.N), dtype=bool)
    if max_epochs is None or points.epochs is None:
        return keep, []
    keep = ~(points.epochs > max_epochs)  # NaN epochs (whole split, unknown size) are kept
    note = (
        f"fitted on the {int(keep.sum())} of {keep.size} points that see their data at most {max_epochs:g} "
        f"epochs ({int((~keep).sum())} data-constrained points left out; repetition is not modelled)"
    )
    return keep, [note]


def _curve_sizes(used: Points) -> np.ndarray:
    """The model size of each point for the IsoFLOP and envelope curves: its group's median N, or its own N."""
    if not any(used.group):  # one curve per group (a model size), at the group's median N
        return used.N
    med = {g: float(np.median(used.N[[x == g for x in used.group]])) for g in set(used.group)}
    return np.array([med[g] for g in used.group])


def _degenerate_notes(fit: JointFit) -> list[str]:
    """A note per exponent too large for the data to resolve: that law does not determine the N-D split."""
    notes = []
    for name in fit.degenerate:
        term, axis = ("A / N^alpha", "N") if name == "alpha" else ("B / D^beta", "D")
        notes.append(
            f"{name} = {getattr(fit, name):.3g} is beyond any power law the data resolve (> {EXPONENT_MAX:g}): "
            f"the term {term} is a step within the {axis} range, so the law does not determine the split "
            "between N and D; N* and D* below are where that term stops mattering, not an optimum the data show"
        )
    return notes


def _support(fit: JointFit, used: Points, plans: Sequence[Mapping[str, Any]]) -> str:
    """The ranges of N, D and compute the data cover, and whether each plan lies within them."""
    return (
        f"The data cover N {fit.n_range[0]:.3g} to {fit.n_range[1]:.3g} parameters and D {fit.d_range[0]:.3g} to "
        f"{fit.d_range[1]:.3g} {used.data_name} (compute {used.C.min():.3g} to {used.C.max():.3g} FLOPs); "
        + "; ".join(
            f"at C = {p['C']:.3g} the plan (N {p['N']:.3g}, D {p['D']:.3g}) "
            + ("extrapolates beyond them" if p["extrapolates"] else "lies within them")
            for p in plans
        )
        + "."
    )


#: Bootstrap refits per backtest fit (each cut's parameter interval); fewer than the final fit's, as many fits run.
BACKTEST_BOOTSTRAP = 10
BACKTEST_BOOT = Bootstrap(samples=BACKTEST_BOOTSTRAP)


def backtest_joint(points: Points, cuts=None, *, boot: Bootstrap = BACKTEST_BOOT,
                   **fit_kw: Any) -> backtest.Backtest:  # fmt: skip
    """The joint law's backtests on `points` at `cuts` (compute; None: `backtest.auto_cuts`) at `boot.level`,
    each fit with `boot` and 8 starts; ForecastError naming `backtest_cuts` for a cut that cannot serve."""
    law = joint_law(points, boot=boot, n_starts=8, profile=False, **fit_kw)
    return backtest.backtest(points.C, points.error, law, cuts, level=boot.level)


def for_backtests(boot: Bootstrap) -> Bootstrap:
    """`boot` with at most BACKTEST_BOOTSTRAP samples: the backtests' many fits each take fewer."""
    return Bootstrap(min(boot.samples, BACKTEST_BOOTSTRAP), boot.level, boot.seed)


def with_prediction_interval(plan: Mapping[str, Any], bt: backtest.Backtest) -> dict[str, Any]:
    """A plan whose `error_interval` is the prediction interval (the parameter interval widened by the
    backtests' conformal q, `backtest`), the bootstrap one kept as `error_parameter_interval`, and the
    coverage the backtests measured for such intervals."""
    p = dict(plan)
    param = p.get("error_interval") or (p["error"], p["error"])
    p["error_parameter_interval"] = p.get("error_interval")
    covered = [c["coverage"] for c in bt.cuts if c.get("coverage") is not None]
    p["error_interval_level"] = bt.level
    p["error_interval_coverage"] = float(np.mean(covered)) if covered else None
    if bt.q is None:
        p["error_interval"] = None
        p["error_interval_note"] = (
            f"no prediction interval: {bt.n_scores} backtest residual(s), a {bt.level:.0%} interval needs "
            f"at least {math.ceil(bt.level / (1 - bt.level))}"
        )
    else:
        lo, hi = backtest.widen(p["error"], param[0], param[1], bt.q)
        p["error_interval"] = (float(lo[0]), float(hi[0]))
    return p


def _used_points(points: Points, repetition_: str, max_epochs: float | None) -> tuple[np.ndarray, list[str]]:
    """Which points the fit takes: all when repetition is modelled, else those within `max_epochs`."""
    if repetition_ not in repetition.REPETITION:
        raise backtest.ForecastError("repetition", f"{repetition_!r} is not one of {', '.join(repetition.REPETITION)}")
    if repetition_ == "muennighoff":
        return np.ones(len(points.N), dtype=bool), [
            "repeated data modelled (Muennighoff et al. 2023): every point fitted"
        ]
    return _within_epochs(points, max_epochs)


def forecast(points: Points, *, repetition_: str = "none", max_epochs: float | None = MAX_EPOCHS,
             boot: Bootstrap = BOOTSTRAP, backtest_cuts: Any = None) -> tuple[JointFit, backtest.Backtest]:  # fmt: skip
    """The joint law on the points `allocate` would use and its backtests: what a prediction interval needs."""
    keep, _ = _used_points(points, repetition_, max_epochs)
    used = points.subset(keep)
    bt = backtest_joint(used, backtest_cuts, boot=for_backtests(boot), repetition_=repetition_)
    return fit_points(used, boot=boot, repetition_=repetition_), bt


def allocate(
    points: Points,
    *,
    budgets: Any = None,
    max_epochs: float | None = MAX_EPOCHS,
    n_bootstrap: int = 100,
    ci_level: float = 0.9,
    seed: int = 0,
    repetition_: str = "none",
    backtest_cuts: Any = None,
    unique: float | None = None,
    **fit_kw: Any,
) -> dict[str, Any]:
    """All three approaches on `points`, the joint law's backtests, and the plan at each of `budgets`
    (compute; under a fixed dataset of `unique` items when given) with its prediction interval. Points
    that repeat their data more than `max_epochs` are left out unless `repetition_` is "muennighoff".
    Returns {"fit": JointFit, "points": the points used, "backtest", "summary": JSON-safe: k, joint,
    isoflop, envelope, backtest, plans, agreement, support}; ForecastError for a bad parameter."""
    keep, epoch_notes = _used_points(points, repetition_, max_epochs)
    used = points.subset(keep)
    boot = Bootstrap(n_bootstrap, ci_level, seed)
    bt = backtest_joint(used, backtest_cuts, boot=for_backtests(boot), repetition_=repetition_, **fit_kw)
    fit = fit_points(used, boot=boot, repetition_=repetition_, **fit_kw)
    sizes = _curve_sizes(used)
    iso = isoflop(sizes, used.C, used.error, boot=boot)
    env = envelope(sizes, used.C, used.error, boot=boot)
    if budgets is None:
        budgets = [float(used.C.max()) * f for f in (1.0, 4.0, 16.0)]
    plans = [with_prediction_interval(fit.plan(float(c), unique), bt) for c in np.atleast_1d(budgets)]
    jd = fit.as_dict()
    agree = agreement(
        {"joint law": (jd["a"], jd["intervals"].get("a")), "IsoFLOP": (iso["a"], iso["interval"]),
         "envelope": (env["a"], env["interval"])}
    )  # fmt: skip
    summary = {
        "k": fit.k,
        "k_given": used.k_given,
        "n_points": int(keep.sum()),
        "n_excluded": int((~keep).sum()),
        "max_epochs": max_epochs,
        "repetition": repetition_,
        "notes": [*points.notes, *epoch_notes, *_degenerate_notes(fit)],
        "joint": jd,
        "isoflop": iso,
        "envelope": env,
        "backtest": bt.as_dict(),
        "prediction_interval": PREDICTION_INTERVAL,
        "plans": plans,
        "agreement": agree,
        "support": _support(fit, used, plans),
    }
    return {"fit": fit, "points": used, "backtest": bt, "summary": summary}


#: How a report names the prediction interval's method.
PREDICTION_INTERVAL = (
    "prediction interval: the bootstrap (parameter) interval stretched by locally weighted split-conformal q on "
    "backtest residuals of log error (Vovk et al. 2005; Lei et al. 2018), see vitscale.scaling.backtest"
)
