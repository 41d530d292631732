"""Forecasts that come true (issue 35): backtests and prediction intervals checked for coverage on
public and synthetic runs, and the data-constrained law against its authors' published fit."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitscale.scaling import repetition

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
