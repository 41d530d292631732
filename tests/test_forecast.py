"""Forecasts that come true (issue 35): backtests and prediction intervals checked for coverage on
public and synthetic runs, and the data-constrained law against its authors' published fit."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitscale.scaling import allocation, backtest, repetition
from vitscale.scaling.table import Points

DATA = Path(__file__).parent / "data"


# ----------------------------------------------------------------------------- repeated data
@pytest.fixture(scope="module")
def datablations():
    df = pd.read_csv(DATA / "datablations_runs.csv")
    assert len(df) == 182
    return tuple(df[c].to_numpy(float) for c in ("params", "tokens_or_samples", "unique", "loss"))


def test_the_published_data_constrained_fit_reaches_its_published_objective(datablations):
    """Muennighoff et al.'s objective at their R_D*, R_N* (base constants fixed as they did): 0.0158259."""
    p = repetition.PUBLISHED
    f = repetition.objective(repetition.Base.published(), *datablations, p["rd_star"], p["rn_star"])
    assert f == pytest.approx(0.0158259, abs=1e-7)


def test_fitting_r_stars_reaches_no_higher_objective_and_r_d_profile_contains_15_4(datablations):
    fit = repetition.fit_stars(repetition.Base.published(), *datablations)
    assert fit.objective <= 0.0158259
    lo, hi = fit.interval
    assert lo <= 15.4 <= hi
    # the valley: the objective does not pin R_D* down from above (README of the fixtures)
    assert hi > 100
    print(f"R_D* = {fit.rd_star:.4g} [{lo:.4g}, {hi:.4g}] (open above: {fit.open_above}), "
          f"R_N* = {fit.rn_star:.4g}, objective {fit.objective:.7f}")  # fmt: skip


def test_effective_data_matches_its_closed_form_limits():
    # no repetition: D' = D; repeated for ever: U (1 + R_D*); one repeat with R* = inf-like: 2 U
    assert repetition.effective_data(100.0, 100.0, 15.0) == pytest.approx(100.0)
    assert repetition.effective_data(1e12, 1.0, 15.0) == pytest.approx(16.0)
    assert repetition.effective_data(200.0, 100.0, 1e9) == pytest.approx(200.0, rel=1e-6)
    assert repetition.effective_data(200.0, np.nan, 15.0) == 200.0


# ----------------------------------------------------------------------------- coverage
def _top_fifth_cut(C):
    """The cut that holds out the top-compute fifth of the runs (between the two runs either side)."""
    c = np.sort(C)
    m = round(0.2 * c.size)
    return float(np.sqrt(c[-m - 1] * c[-m]))


@pytest.fixture(scope="module")
def chinchilla_points():
    df = pd.read_csv(DATA / "chinchilla_epoch_svg_extracted_data.csv")
    df = df.sort_values("loss").iloc[:-5]  # the replication drops the 5 highest-loss runs
    n, c, loss = df["Model Size"].to_numpy(), df["Training FLOP"].to_numpy(), df["loss"].to_numpy()
    return Points(n, c / (6 * n), c, loss, [str(i) for i in range(n.size)], [""] * n.size, 6.0, True)


def test_joint_law_prediction_intervals_cover_chinchillas_top_compute_fifth(chinchilla_points):
    """Fit on the 192 cheapest of Epoch's 240 Chinchilla runs, predict the top-compute 48: the nominal 90%
    prediction intervals (calibrated on backtests inside the 192 only) contain 75-100% of the losses.
    Width bound: an interval must be narrower than the spread of the losses it forecasts, or knowing
    (N, D) adds nothing; the held-out losses' 5-95% range is 8.7% of their median (an interval that ignores
    N and D and peeks at the answers), and the bound is half that. Measured: coverage 85.4% (the bootstrap
    parameter intervals alone: 12.5%), mean relative width 2.78%."""
    p = chinchilla_points
    cut = _top_fifth_cut(p.C)
    law = allocation.joint_law(p, n_bootstrap=10, n_starts=16)
    bt = backtest.backtest(p.C, p.error, law, [cut], level=0.9)
    (res,) = bt.cuts
    held = p.error[p.C >= cut]
    spread = (np.quantile(held, 0.95) - np.quantile(held, 0.05)) / np.median(held)
    print(f"cut {cut:.4g}: coverage {res['coverage']:.3f}, mean relative width {res['width']:.4f}, "
          f"parameter interval coverage {res['parameter_coverage']:.3f}, spread {spread:.4f}")  # fmt: skip
    assert res["n_train"] == 192 and res["n_test"] == 48
    assert 0.75 <= res["coverage"] <= 1.0
    assert res["width"] <= 0.5 * spread


SYN = {"E": 0.1, "A": 40.0, "B": 60.0, "alpha": 0.35, "beta": 0.3}


def synthetic_study(extra: str, seed: int, noise: float = 0.01) -> Points:
    """7 sizes over 2 decades x 8 lengths over 3 decades, 1% log-normal noise, from the joint law
    (`extra` "none"), or with a term the joint law does not contain: "interaction" adds 3 (N D)^-0.15,
    "step" lowers the error of the two largest sizes by 7%."""
    rng = np.random.default_rng(seed)
    n, d = (v.ravel() for v in np.meshgrid(np.logspace(6, 8, 7), np.logspace(6, 9, 8)))
    e = SYN["E"] + SYN["A"] * n ** -SYN["alpha"] + SYN["B"] * d ** -SYN["beta"]
    if extra == "interaction":
        e = e + 3.0 * (n * d) ** -0.15
    if extra == "step":
        e = e * np.where(n >= np.unique(n)[-2], 0.93, 1.0)
    e = e * np.exp(rng.normal(0.0, noise, n.size))
    return Points(n, d, 6 * n * d, e, [str(i) for i in range(n.size)], [""] * n.size, 6.0, True)


@pytest.mark.long
@pytest.mark.parametrize("extra", ["none", "interaction", "step"])
def test_synthetic_coverage_of_the_top_fifth(extra):
    """Pooled over 4 studies (44 held-out runs): drawn from the fitted form, coverage about nominal (90%
    +- 10 points); drawn from a law the fit does not contain, not worse than nominal minus 15 points.
    Measured: none 88.6%, interaction 88.6%, step 97.7% (parameter intervals alone: down to 45%)."""
    covered, total = 0.0, 0
    for seed in range(4):
        p = synthetic_study(extra, seed)
        law = allocation.joint_law(p, n_bootstrap=10, n_starts=16)
        (res,) = backtest.backtest(p.C, p.error, law, [_top_fifth_cut(p.C)]).cuts
        covered, total = covered + res["coverage"] * res["n_test"], total + res["n_test"]
    rate = covered / total
    print(f"{extra}: coverage {rate:.3f} of {total} held-out runs")
    if extra == "none":
        assert abs(rate - 0.9) <= 0.1
    else:
        assert rate >= 0.9 - 0.15


def test_conformal_quantile_is_the_split_conformal_rank():
    """ceil((n + 1) 0.9)-th smallest of n scores (n = 19: the 18th), at least 1; too few scores: inf."""
    s = np.arange(1.0, 20.0)
    assert backtest.conformal_q(s, 0.9) == 18.0
    assert backtest.conformal_q(np.full(19, 0.2), 0.9) == 1.0
    assert backtest.conformal_q(np.arange(8.0), 0.9) == np.inf
