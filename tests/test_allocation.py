"""Compute-optimal allocation (issue 27): the joint law against the Chinchilla replication's
published fit, the closed form against Hoffmann's constants, and all three approaches against a
known synthetic E(N, D)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitscale.scaling import allocation, isoflop
from vitscale.scaling.fitting import Bootstrap
from vitscale.scaling.table import Points

DATA = Path(__file__).parent / "data"
CHINCHILLA_BUDGET = 5.76e23


@pytest.fixture(scope="module")
def chinchilla():
    df = pd.read_csv(DATA / "chinchilla_epoch_svg_extracted_data.csv")
    df = df.sort_values("loss").iloc[:-5]  # the replication drops the 5 highest-loss runs
    n, c = df["Model Size"].to_numpy(), df["Training FLOP"].to_numpy()
    return n, c / (6 * n), df["loss"].to_numpy()


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla):
    return allocation.fit_joint(*chinchilla, k=6.0, n_bootstrap=8)


def test_joint_fit_reproduces_the_replications_huber_fit(chinchilla_fit):
    f = chinchilla_fit
    assert len(chinchilla_fit.samples) == 8 and f.n_points == 240
    assert f.E == pytest.approx(1.8172, abs=1e-3)
    assert f.alpha == pytest.approx(0.3473, abs=1e-3)
    assert f.beta == pytest.approx(0.3672, abs=1e-3)
    assert f.A == pytest.approx(477.8, rel=0.02)
    assert f.B == pytest.approx(2144, rel=0.02)
    assert f.a == pytest.approx(0.514, abs=0.005)
    for name in allocation.NAMES:
        lo, hi = f.intervals[name]
        assert lo <= hi and np.isfinite(lo)


def test_chinchilla_budget_optimum(chinchilla_fit):
    p = chinchilla_fit.plan(CHINCHILLA_BUDGET)
    assert p["N"] == pytest.approx(7.3e10, rel=0.03)
    assert p["D_per_N"] == pytest.approx(17.9, rel=0.03)
    assert p["N"] * p["D"] * 6 == pytest.approx(CHINCHILLA_BUDGET, rel=1e-9)
    assert p["N_interval"][0] <= p["N"] <= p["N_interval"][1] or len(chinchilla_fit.samples) < 20
    assert p["extrapolates"]  # 7e10 > the largest model in the data (1.6e10)


def test_closed_form_with_hoffmanns_published_constants():
    n, d = allocation.optimum(CHINCHILLA_BUDGET, A=406.4, B=410.7, alpha=0.34, beta=0.28, k=6.0)
    assert d / n == pytest.approx(92.6, rel=0.005)
    # against a brute-force minimum of the law along the IsoFLOP line
    grid = np.logspace(9, 12, 200001)
    loss = 406.4 * grid**-0.34 + 410.7 * (CHINCHILLA_BUDGET / (6 * grid)) ** -0.28
    assert n == pytest.approx(grid[np.argmin(loss)], rel=1e-3)


# ----------------------------------------------------------------------------- synthetic
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TRUE_A = 0.28 / (0.34 + 0.28)


def synthetic(noise=0.005, seed=0):
    """13 sizes over 2 decades, each trained to 31 lengths over 5 decades of data, 0.5% noise."""
    rng = np.random.default_rng(seed)
    n, d = (v.ravel() for v in np.meshgrid(np.logspace(7, 9, 13), np.logspace(7, 12, 31)))
    e = TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"] + TRUE["B"] * d ** -TRUE["beta"]
    e = e * np.exp(rng.normal(0.0, noise, n.size))
    return Points(n, d, 6 * n * d, e, [str(i) for i in range(n.size)], [""] * n.size, 6.0, False)


def test_all_three_approaches_recover_a_known_allocation():
    res = allocation.allocate(synthetic(), n_bootstrap=20)
    s = res["summary"]
    assert s["joint"]["a"] == pytest.approx(TRUE_A, abs=0.02)
    assert s["joint"]["alpha"] == pytest.approx(TRUE["alpha"], abs=0.02)
    assert s["isoflop"]["a"] == pytest.approx(TRUE_A, abs=0.02)
    assert s["envelope"]["a"] == pytest.approx(TRUE_A, abs=0.02)
    assert len(s["isoflop"]["budgets"]) >= 5
    assert "agree" in s["agreement"]


def test_isoflop_profile_with_its_minimum_at_the_edge_is_not_an_optimum():
    n = np.logspace(6, 8, 6)
    falling = 1.0 + 1e3 * n**-0.5  # error still falling at the largest size
    p = isoflop.profile(n, falling)
    assert p["edge"] and p["N_opt"] is None and "largest" in p["why"]
    bowl = 1.0 + (np.log(n) - np.log(1e7)) ** 2
    q = isoflop.profile(n, bowl)
    assert not q["edge"] and q["N_opt"] == pytest.approx(1e7, rel=1e-6)
    # inside the study: a budget whose profile is all edge is listed among the edges, not fitted
    c = np.repeat(1e18, 6)
    r = isoflop.isoflop(np.r_[n, n], np.r_[c, 2 * c], np.r_[falling, falling * 0.9], budgets=[1e18], boot=Bootstrap(0))
    assert r["profiles"][0]["edge"] and r["edges"] == [1e18] and r["a"] is None


def test_data_constrained_points_are_left_out_and_said_so():
    pts = synthetic()
    pts.epochs = np.where(pts.D > 1e11, 50.0, 1.0)
    s = allocation.allocate(pts, n_bootstrap=0)["summary"]
    assert s["n_excluded"] == int((pts.D > 1e11).sum()) > 0
    assert any("epochs" in note for note in s["notes"])
