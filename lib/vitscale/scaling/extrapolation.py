"""Extrapolation checks: fit below a cut, score the laws' predictions above it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from vitscale.scaling.fitting import LAWS, MIN_POINTS, rmse_log, validate_points
from vitscale.scaling.frontier import PowerLawFit, fit_power_law, pareto_frontier
from vitscale.scaling.laws import LawFit, M4Fit, fit_law, fit_m4, law_name


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
    """Fit on `x < cut`, predict `x >= cut`, report the extrapolation error.

    Fit points (`frontier=True`, the default): the Pareto frontier of *all* runs, below the
    cut (frontier membership of a point below the cut does not depend on points above it, so no
    test information leaks into the fit); `frontier=False` fits all runs below the cut.

    Scored points (`score`): `"all"`: every run at or above the cut, as the M4 paper scores
    held-out points of a learning curve; `"frontier"` (default): only the frontier runs at or
    above the cut, i.e. those that set a new running minimum.  On a single noisy curve use
    `"all"`: the filter can reverse which law looks better (a law that keeps falling is rewarded
    on the few record-setting points and not penalised on the rest).  The default stays
    `"frontier"` because `vitscale.analysis.analyze` passes whole sweeps, whose dominated
    runs (worse hyper-parameters) no law of the best reachable error is meant to predict.

    `fitters`: names from `LAWS` (`"m4"` is an alias of `"M4"`); `e0` (random-guess
    error) is required for M4.

    Returns a dict with `cut`, `score`, `train_x`/`train_e`, `test_x`/`test_e` (lists)
    and `results[name]` holding `params` (`as_dict()` of the fit), `pred` (predictions at
    `test_x`), `rmse_log` (RMSE of `log e`) and `mare` (mean |pred - e| / e) over the test
    points, and `fit` (the fit object itself; drop it before `json.dumps`).
    """
    x, e = validate_points(x, e, x_name="x", min_points=None)
    fitters = tuple(fitters)
    for name in fitters:
        try:
            law_name(name)
        except ValueError:
            raise ValueError(f"unknown fitter {name!r}; choose from {', '.join(LAWS)} (or 'm4')") from None
    if score not in ("all", "frontier"):
        raise ValueError(f"score must be 'all' or 'frontier', got {score!r}")
    if any(law_name(n) == "M4" for n in fitters) and e0 is None:
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
        law = law_name(name)
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
