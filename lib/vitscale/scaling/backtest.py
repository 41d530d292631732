"""Backtests and prediction intervals: how wrong a law is on runs it never saw, and intervals that say so.

Backtest: fit a law on the runs below a compute cut, predict the runs at or above it, and score the
predictions (RMSE of log error, mean relative error) and their intervals (how often the nominal interval
contained the truth: coverage; and its mean width relative to the prediction). Cuts hold out the top
`HOLDOUTS` fractions of the runs by compute, each only where enough runs stay below it for the law.
The frontier laws follow `extrapolation_check`'s convention (fit and score the Pareto frontier of all
runs, so the backtest at its cut scores what it scores); the joint law fits and scores every run.

Two intervals per prediction:
* the parameter interval: the percentile interval of the predictions of bootstrap refits (resampled
  runs): how much the constants move, not how wrong the law can be beyond the data;
* the prediction interval, by locally weighted split-conformal prediction (Vovk, Gammerman & Shafer
  2005, "Algorithmic learning in a random world"; Lei, G'Sell, Rinaldo, Tibshirani & Wasserman 2018,
  "Distribution-free predictive inference for regression", section 5.2) on log error, the parameter
  interval's half-width in log space as the local scale s(x): each backtest's held-out run scores
  |log e - log pred| / s(x); q is the ceil((n + 1) level)-th smallest of the n scores, and a new run's
  interval is pred e^(-+q s(x)) joined with its parameter interval: the parameter interval stretched by
  the out-of-sample error the backtests measured. Scaling by s(x) lets a forecast further from the data
  (a wider parameter interval) get a wider interval: on Chinchilla's runs the largest models, beyond the
  fitted sizes, miss by twice as much as the rest, which an unweighted score calibrated on smaller
  extrapolations does not cover.
  Without bootstrap refits (s = 0 everywhere) the score is |log e - log pred| itself (plain split-conformal).
  The guarantee assumes the new run's score is exchangeable with the backtests'; the coverage reported
  for each cut (q calibrated only on backtests inside that cut's own training runs) shows whether it held.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitscale.scaling.fitting import Bootstrap, bootstrap_indices, rmse_log
from vitscale.scaling.frontier import pareto_frontier
from vitscale.scaling.laws import fit_law

#: The nominal level of the intervals.
LEVEL = 0.9

#: A frontier law's default: no parameter interval (its prediction interval is plain split-conformal).
NO_BOOTSTRAP = Bootstrap(samples=0, level=LEVEL)

#: Fractions of the runs (by compute) the automatic cuts hold out.
HOLDOUTS = (0.2, 0.35, 0.5)


class ForecastError(ValueError):
    """A backtest or forecast parameter that cannot serve (a cut, the repetition model): its field and why."""

    def __init__(self, field_: str, message: str):
        self.field, self.message = field_, message
        super().__init__(f"{field_}: {message}")


@dataclass
class Law:
    """A law as the backtest sees it: `fit(mask)` fits it on the runs in the mask; `predict(model,
    mask)` gives (prediction, parameter-interval lower, upper) at the runs in the mask."""

    name: str
    min_points: int
    fit: Callable[[np.ndarray], Any]
    predict: Callable[[Any, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
    fit_on: np.ndarray  # runs the law may be fitted on (all, or the frontier)
    scored: np.ndarray  # runs its predictions are scored on


@dataclass
class Held:
    """One law's predictions of the runs at or above one cut."""

    law: str
    cut: float
    n_train: int
    C: np.ndarray  # compute of the held-out runs
    truth: np.ndarray
    pred: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def scale(self) -> np.ndarray:
        """The local scale: half the log-width of the parameter interval (1 where no run has one)."""
        return local_scale(self.pred, self.lower, self.upper)

    def scores(self) -> np.ndarray:
        """The conformal scores: |log truth - log prediction| in units of the local scale."""
        return np.abs(np.log(self.truth) - np.log(self.pred)) / self.scale()

    def summary(self, q: float | None = None) -> dict[str, Any]:
        out = {
            "cut": self.cut,
            "n_train": self.n_train,
            "n_test": int(self.truth.size),
            "rmse_log": rmse_log(self.pred, self.truth),
            "mare": float(np.mean(np.abs(self.pred - self.truth) / self.truth)),
            "parameter_coverage": coverage(self.truth, self.lower, self.upper),
            "parameter_width": mean_relative_width(self.lower, self.upper, self.pred),
        }
        if q is not None and math.isfinite(q):
            lo, hi = widen(self.pred, self.lower, self.upper, q)
            out |= {"q": q, "coverage": coverage(self.truth, lo, hi), "width": mean_relative_width(lo, hi, self.pred)}
        else:
            out |= {"q": None, "coverage": None, "width": None}
        return out


def coverage(truth, lower, upper) -> float:
    """The fraction of `truth` inside [lower, upper]."""
    truth = np.asarray(truth, dtype=float)
    return float(np.mean((np.asarray(lower) <= truth) & (truth <= np.asarray(upper))))


def mean_relative_width(lower, upper, pred) -> float:
    """Mean of (upper - lower) / prediction."""
    return float(np.mean((np.asarray(upper) - np.asarray(lower)) / np.asarray(pred)))


def local_scale(pred, lower, upper) -> np.ndarray:
    """Half the log-width of each parameter interval; where one is a point, the smallest positive half-width
    (1 when none has width: no bootstrap, the plain absolute log residual)."""
    s = 0.5 * (np.log(np.asarray(upper, dtype=float)) - np.log(np.asarray(lower, dtype=float)))
    s = np.atleast_1d(np.where(np.isfinite(s), s, 0.0))
    positive = s[s > 0]
    return np.where(s > 0, s, positive.min() if positive.size else 1.0)


def conformal_q(scores: Any, level: float = LEVEL) -> float:
    """The split-conformal quantile: the ceil((n + 1) level)-th smallest score; inf when there are too few
    scores for that rank (fewer than level / (1 - level))."""
    s = np.sort(np.asarray(scores, dtype=float))
    k = math.ceil((s.size + 1) * level)
    return math.inf if k > s.size else max(0.0, float(s[k - 1]))


def widen(pred: Any, lower: Any, upper: Any, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The prediction interval pred e^(-+q s), s the local scale; it contains [lower, upper]."""
    pred, lower, upper = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (pred, lower, upper))
    s = local_scale(pred, lower, upper)
    return np.minimum(lower, pred * np.exp(-q * s)), np.maximum(upper, pred * np.exp(q * s))


# ----------------------------------------------------------------------------- cuts
def auto_cuts(C: np.ndarray, law: Law, within: np.ndarray | None = None, holdouts=HOLDOUTS) -> list[float]:
    """Cuts that hold out about the top `holdouts` fractions of the law's scored runs (in `within`) by
    compute, each between two distinct compute values (runs of equal compute fall on one side), kept
    only if at least `law.min_points` fittable runs lie below it and a scored run at or above it."""
    within = np.ones(C.size, dtype=bool) if within is None else within
    c = np.sort(C[within & law.scored])
    u = np.unique(c)
    if u.size < 2:
        return []
    above = np.array([np.sum(c >= v) for v in u[1:]]) / c.size  # held out by a cut just below u[1:]
    cuts: list[float] = []
    for h in holdouts:
        j = int(np.argmin(np.abs(above - h)))
        cut = math.sqrt(u[j] * u[j + 1])
        if cut not in cuts and _problem(C, law, cut, within) is None:
            cuts.append(cut)
    return sorted(cuts)


def _problem(C: np.ndarray, law: Law, cut: float, within: np.ndarray) -> str | None:
    below = int(np.sum(law.fit_on & within & (C < cut)))
    if below < law.min_points:
        return f"the cut {cut:g} leaves {below} run(s) below it to fit {law.name}, which needs {law.min_points}"
    if not np.any(law.scored & within & (C >= cut)):
        return f"the cut {cut:g} leaves no run at or above it to predict"
    return None


def check_cuts(C: np.ndarray, law: Law, cuts, field_: str = "backtest_cuts") -> None:
    """A ForecastError naming `field_` for the first cut that cannot backtest `law`."""
    everything = np.ones(C.size, dtype=bool)
    for cut in cuts:
        if (why := _problem(C, law, float(cut), everything)) is not None:
            raise ForecastError(field_, why)


# ----------------------------------------------------------------------------- backtests
def hold_out(C: np.ndarray, e: np.ndarray, law: Law, cut: float, within: np.ndarray | None = None) -> Held:
    """Fit `law` on its runs below `cut` (inside `within`), predict its scored runs at or above it."""
    within = np.ones(C.size, dtype=bool) if within is None else within
    train = law.fit_on & within & (C < cut)
    test = law.scored & within & (C >= cut)
    model = law.fit(train)
    pred, lo, hi = law.predict(model, test)
    return Held(law.name, float(cut), int(train.sum()), C[test], e[test], pred, lo, hi)


def _inner_q(C: np.ndarray, e: np.ndarray, law: Law, cut: float, level: float) -> float | None:
    """q calibrated on backtests inside the runs below `cut` only (None: too few runs to backtest there)."""
    within = C < cut
    inner = auto_cuts(C, law, within)
    if not inner:
        return None
    scores = np.concatenate([_safe_scores(C, e, law, c, within) for c in inner])
    q = conformal_q(scores, level)
    return q if math.isfinite(q) else None


def _safe_scores(C, e, law, cut, within) -> np.ndarray:
    try:
        return hold_out(C, e, law, cut, within).scores()
    except (ValueError, RuntimeError):
        return np.zeros(0)


@dataclass
class Backtest:
    """A law's backtests: per cut its summary (errors, coverage of both intervals); `q` the conformal
    widening calibrated on all of them, for forecasts beyond the data (None: too few held-out runs)."""

    law: str
    level: float
    cuts: list[dict[str, Any]] = field(default_factory=list)
    q: float | None = None
    n_scores: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "law": self.law,
            "level": self.level,
            "cuts": self.cuts,
            "q": self.q,
            "n_scores": self.n_scores,
            "errors": self.errors,
        }


def _earlier_q(helds: list[Held], cut: float, level: float) -> float | None:
    """q calibrated on the earlier cuts' predictions of runs below `cut` only: the same fits, scored on
    runs that `cut`'s own fit also saw, so nothing at or above `cut` is used (None: too few such runs)."""
    scores = [h.scores()[h.C < cut] for h in helds if h.cut < cut]
    if not scores:
        return None
    q = conformal_q(np.concatenate(scores), level)
    return q if math.isfinite(q) else None


def backtest(C: Any, e: Any, law: Law, cuts=None, *, level: float = LEVEL, nested: str = "refit") -> Backtest:
    """Backtest `law` at each of `cuts` (None: `auto_cuts`; given cuts are checked, ForecastError if one
    cannot serve). Each cut's prediction-interval coverage uses a q calibrated only on runs below it:
    `nested` "refit" backtests the runs below it at their own cuts (refits), "earlier" reuses the earlier
    cuts' fits on the runs between them and this cut (no refits; the first cut has none). The returned q
    pools every cut's scores, for forecasts beyond all the runs."""
    C, e = np.asarray(C, dtype=float), np.asarray(e, dtype=float)
    if cuts is None:
        cuts = auto_cuts(C, law)
    else:
        check_cuts(C, law, cuts)
    out, helds = Backtest(law.name, level), []
    for cut in sorted(float(c) for c in cuts):
        try:
            held = hold_out(C, e, law, cut)
        except (ValueError, RuntimeError) as err:
            out.errors.append(f"cut {cut:g}: {err}")
            continue
        q = _inner_q(C, e, law, cut, level) if nested == "refit" else _earlier_q(helds, cut, level)
        helds.append(held)
        out.cuts.append(held.summary(q))
    if helds:
        pooled = np.concatenate([h.scores() for h in helds])
        q = conformal_q(pooled, level)
        out.q, out.n_scores = (q if math.isfinite(q) else None), int(pooled.size)
    return out


# ----------------------------------------------------------------------------- the laws
def frontier_law(x: Any, e: Any, name: str, *, e0: float | None = None, boot: Bootstrap = NO_BOOTSTRAP) -> Law:
    """A law of `LAWS` on the Pareto frontier of (x, e) (M4: its points below e0), with a parameter
    interval from `boot.samples` refits on resampled training points (none by default, as the power law and
    M4 take a second or more a fit; the prediction interval is then plain split-conformal)."""
    x, e = np.asarray(x, dtype=float), np.asarray(e, dtype=float)
    front = pareto_frontier(x, e)
    if name.lower() == "m4":
        front = front & (e < e0)

    def fit(mask):
        xt, et = x[mask], e[mask]
        main = fit_law(name, xt, et, e0=e0)
        rng, boots = np.random.default_rng(boot.seed), []
        for _ in range(boot.samples):
            idx = bootstrap_indices(rng, xt)
            if idx is not None:
                try:
                    boots.append(fit_law(name, xt[idx], et[idx], e0=e0))
                except (ValueError, RuntimeError):
                    continue
        return main, boots

    def predict(model, mask):
        main, boots = model
        pred = np.asarray(main.predict(x[mask]), dtype=float)
        if not boots:
            return pred, pred, pred
        draws = np.array([np.asarray(b.predict(x[mask]), dtype=float) for b in boots])
        lo, hi = np.nanpercentile(draws, [50 * (1 - boot.level), 100 - 50 * (1 - boot.level)], axis=0)
        return pred, np.minimum(lo, pred), np.maximum(hi, pred)

    return Law(name, 4, fit, predict, front, front)
