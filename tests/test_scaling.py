"""Tests for vitscale.scaling against known ground truth (not the code's own output)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

from vitscale.scaling import (
    LAWS,
    extrapolation_check,
    fit_law,
    fit_m1,
    fit_m2,
    fit_m3,
    fit_m4,
    fit_power_law,
    frontier_fit,
    m4_solve,
    pareto_frontier,
    resolved,
    rmse_log,
)

# ground truth: E = a (C + d)^-b + c, 4 decades of compute, both saturations visible
TRUE_PL = dict(a=2.0, b=0.5, c=0.05, d=3.0)
# ground truth M4: (e - e_inf) / (e0 - e)^alpha = beta x^c ; e0 = 1 - 1/10 (10 classes)
TRUE_M4 = dict(e_inf=0.05, beta=30.0, c=-0.35, alpha=0.7, e0=0.9)


def power_law(C, a, b, c, d):
    return a * (C + d) ** (-b) + c


def m4_truth(x, e_inf, beta, c, alpha, e0, iters=200):
    """Independent reference: plain bisection on e in (e_inf, e0)."""
    x = np.asarray(x, dtype=float)
    lo = np.full(x.shape, float(e_inf))
    hi = np.full(x.shape, float(e0))
    f = beta * x**c
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        g = (mid - e_inf) / (e0 - mid) ** alpha
        below = g < f
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def brute_force_frontier(x, y):
    n = len(x)
    return np.array([not any(x[j] <= x[i] and y[j] < y[i] for j in range(n) if j != i) for i in range(n)])


# --------------------------------------------------------------------------- Pareto
@pytest.mark.parametrize("seed", range(5))
def test_pareto_matches_brute_force_continuous(seed):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(size=60)
    y = rng.lognormal(size=60)
    np.testing.assert_array_equal(pareto_frontier(x, y), brute_force_frontier(x, y))


@pytest.mark.parametrize("seed", range(5))
def test_pareto_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    x = rng.integers(0, 8, size=50).astype(float)  # many equal x and equal y
    y = rng.integers(0, 8, size=50).astype(float)
    np.testing.assert_array_equal(pareto_frontier(x, y), brute_force_frontier(x, y))


def test_pareto_small_cases():
    # duplicates both kept; same x -> only the lower y; later equal y kept
    x = [1, 1, 2, 2, 3, 4]
    y = [5, 5, 4, 6, 4, 7]
    assert pareto_frontier(x, y).tolist() == [True, True, True, False, True, False]
    assert pareto_frontier([], []).tolist() == []


# --------------------------------------------------------------------------- power law
def test_power_law_noiseless_exact():
    C = np.logspace(0, 4, 25)
    fit = fit_power_law(C, power_law(C, **TRUE_PL), n_bootstrap=0)
    for k, v in TRUE_PL.items():
        assert getattr(fit, k) == pytest.approx(v, rel=1e-5), k
    assert fit.rmse_log < 1e-8
    assert fit.n == 25


def test_power_law_noiseless_large_compute_units():
    # compute in FLOP-like units (1e15..1e19): internal normalisation must cope
    S = 1e15
    C = np.logspace(0, 4, 20) * S
    truth = dict(a=2.0 * S**0.5, b=0.5, c=0.05, d=3.0 * S)
    fit = fit_power_law(C, power_law(C, **truth), n_bootstrap=0)
    for k, v in truth.items():
        assert getattr(fit, k) == pytest.approx(v, rel=1e-5), k
    C_new = np.logspace(4, 6, 5) * S
    np.testing.assert_allclose(fit.predict(C_new), power_law(C_new, **truth), rtol=1e-6)


def test_power_law_noiseless_pure_power_law_d_zero():
    C = np.logspace(1, 5, 20)
    truth = dict(a=5.0, b=0.3, c=0.02, d=0.0)
    fit = fit_power_law(C, power_law(C, **truth), n_bootstrap=0)
    assert fit.a == pytest.approx(5.0, rel=1e-4)
    assert fit.b == pytest.approx(0.3, rel=1e-4)
    assert fit.c == pytest.approx(0.02, rel=1e-4)
    assert fit.d < 1e-3 * C.min()


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_power_law_recovers_parameters_with_noise(seed):
    rng = np.random.default_rng(seed)
    C = np.logspace(0, 4, 25)
    E = power_law(C, **TRUE_PL) * np.exp(0.02 * rng.standard_normal(C.size))  # 2% noise
    fit = fit_power_law(C, E, n_bootstrap=100, seed=seed)
    assert fit.b == pytest.approx(TRUE_PL["b"], rel=0.1)
    assert fit.c == pytest.approx(TRUE_PL["c"], rel=0.2)
    assert fit.a == pytest.approx(TRUE_PL["a"], rel=0.2)
    assert fit.d == pytest.approx(TRUE_PL["d"], rel=0.4)
    assert fit.rmse_log == pytest.approx(0.02, rel=0.5)  # residual ~ the noise level
    # predictions close to the noiseless truth over the data range
    np.testing.assert_allclose(fit.predict(C), power_law(C, **TRUE_PL), rtol=0.03)


def test_power_law_bootstrap_intervals_cover_truth():
    # percentile bootstrap (95%) over 6 independent noisy draws: the true b and
    # c must lie in the interval in (nearly) all of them
    C = np.logspace(0, 4, 25)
    hits = {"b": 0, "c": 0}
    for seed in range(6):
        rng = np.random.default_rng(1000 + seed)
        E = power_law(C, **TRUE_PL) * np.exp(0.02 * rng.standard_normal(C.size))
        fit = fit_power_law(C, E, n_bootstrap=150, seed=seed, ci_level=0.95)
        assert fit.n_bootstrap == 150
        for k in hits:
            lo, hi = fit.intervals[k]
            assert lo <= getattr(fit, k) <= hi
            hits[k] += lo <= TRUE_PL[k] <= hi
    assert hits["b"] >= 5 and hits["c"] >= 5, hits


def test_power_law_on_four_points_has_no_interval_to_claim():
    """Four points for four constants (issue 25: a 2-run sweep): every resample that keeps 4 distinct
    x is the data itself, so refits only measured the optimiser's noise (c = 2.7e-20 "in" [8e-22,
    9.6e-22]). Now: no intervals, every constant unresolved; M4 likewise."""
    C = np.array([1e9, 3e9, 1e10, 4e10])
    E = 0.8 * (C / 1e9) ** -0.05  # a plain power law, below chance (0.9)
    fit = fit_power_law(C, E, n_bootstrap=30, seed=0)
    assert fit.intervals == {} and fit.n_bootstrap == 0
    assert sorted(fit.unresolved) == ["a", "b", "c", "d"]
    m4 = fit_m4(C, E, 0.9, n_bootstrap=10, seed=0)
    assert m4.intervals == {} and set(m4.unresolved) == {"e_inf", "beta", "c", "alpha", "e0"}


@pytest.mark.parametrize("n", [5, 6])
def test_power_law_estimate_inside_its_interval_or_flagged(n):
    """Short random frontiers: each estimate lies inside its own bootstrap interval, or the constant is
    listed as unresolved (a fit on a bound sits at one end of its bootstrap distribution)."""
    rng = np.random.default_rng(n)
    for _ in range(6):
        C = 10 ** np.sort(rng.uniform(9, 11, n))
        E = np.sort(rng.uniform(0.2, 0.6, n))[::-1]
        fit = fit_power_law(C, E, n_bootstrap=30, seed=0)
        for k, (lo, hi) in fit.intervals.items():
            assert lo <= getattr(fit, k) <= hi or k in fit.unresolved, (k, getattr(fit, k), lo, hi)
            if not fit.at_bound:
                assert lo <= getattr(fit, k) <= hi


def test_power_law_interval_levels_and_band():
    rng = np.random.default_rng(7)
    C = np.logspace(0, 4, 25)
    E = power_law(C, **TRUE_PL) * np.exp(0.02 * rng.standard_normal(C.size))
    wide = fit_power_law(C, E, n_bootstrap=100, seed=0, ci_level=0.95)
    narrow = fit_power_law(C, E, n_bootstrap=100, seed=0, ci_level=0.68)
    for k in "abcd":
        assert wide.intervals[k][0] <= narrow.intervals[k][0]
        assert narrow.intervals[k][1] <= wide.intervals[k][1]
    lo, hi = wide.predict_band(C)
    assert np.all(lo <= hi)
    assert np.any(hi > lo)
    # pointwise percentile bands undercover a little; the truth is within 2% of the band
    true_E = power_law(C, **TRUE_PL)
    assert np.all((true_E >= 0.98 * lo) & (true_E <= 1.02 * hi))
    d = wide.as_dict()
    json.dumps(d)
    assert set(d["intervals"]) == {"a", "b", "c", "d"}


def test_frontier_fit_ignores_dominated_runs():
    rng = np.random.default_rng(3)
    C = np.logspace(0, 4, 20)
    E = power_law(C, **TRUE_PL)
    # bad runs: worse than the frontier at their compute
    C_bad = rng.uniform(1, 1e4, size=30)
    E_bad = power_law(C_bad, **TRUE_PL) * rng.uniform(1.1, 2.0, size=30)
    fit, mask = frontier_fit(np.r_[C, C_bad], np.r_[E, E_bad], n_bootstrap=0)
    assert mask[:20].all() and not mask[20:].any()
    for k, v in TRUE_PL.items():
        assert getattr(fit, k) == pytest.approx(v, rel=1e-4), k


# --------------------------------------------------------------------------- M4
def test_m4_solver_matches_reference_bisection():
    x = np.logspace(0, 10, 40)
    for params in (
        TRUE_M4,
        dict(e_inf=0.0, beta=3.0, c=-0.2, alpha=2.0, e0=0.99),
        dict(e_inf=0.2, beta=0.5, c=-0.5, alpha=0.0, e0=0.5),
    ):
        if params["alpha"] == 0.0:
            expected = params["e_inf"] + params["beta"] * x ** params["c"]
        else:
            expected = m4_truth(x, **params)
        np.testing.assert_allclose(m4_solve(x, **params), expected, rtol=1e-10, atol=1e-14)


def test_m4_recovers_parameters_noiseless():
    x = np.logspace(2, 7, 25)
    e = m4_truth(x, **TRUE_M4)
    fit = fit_m4(x, e, e0=0.999)  # e0 is learned: start from a wrong random-guess error
    for k in ("e_inf", "beta", "c", "alpha", "e0"):
        assert getattr(fit, k) == pytest.approx(TRUE_M4[k], rel=1e-5), k
    assert fit.rmse_log < 1e-8
    assert fit.at_bound == []
    x_new = np.logspace(7, 9, 5)
    np.testing.assert_allclose(fit.predict(x_new), m4_truth(x_new, **TRUE_M4), rtol=1e-6)
    json.dumps(fit.as_dict())


def test_m4_recovers_parameters_noiseless_second_setting():
    # 1000 classes, large x units, alpha > 1
    truth = dict(e_inf=0.12, beta=2e3, c=-0.45, alpha=1.3, e0=0.999)
    x = np.logspace(8, 12, 20)
    e = m4_truth(x, **truth)
    fit = fit_m4(x, e, e0=truth["e0"])
    for k in ("e_inf", "beta", "c", "alpha", "e0"):
        assert getattr(fit, k) == pytest.approx(truth[k], rel=1e-4), k
    fixed = fit_m4(x, e, e0=truth["e0"], learn_e0=False)  # the fixed-e0 ablation, at the true e0
    for k in ("e_inf", "beta", "c", "alpha"):
        assert getattr(fixed, k) == pytest.approx(truth[k], rel=1e-4), k
    assert fixed.e0 == truth["e0"]


def test_m4_with_noise_tracks_true_curve():
    rng = np.random.default_rng(0)
    x = np.logspace(2, 7, 25)
    e_true = m4_truth(x, **TRUE_M4)
    e = e_true * np.exp(0.01 * rng.standard_normal(x.size))
    fit = fit_m4(x, e, e0=TRUE_M4["e0"], n_bootstrap=50)
    np.testing.assert_allclose(fit.predict(x), e_true, rtol=0.03)
    assert -0.45 < fit.c < -0.25
    assert 0.0 <= fit.e_inf < e.min()
    # M4 parameters are weakly identified under noise (the log-excess objective
    # pulls e_inf down), so only check the bootstrap machinery here
    assert fit.n_bootstrap == 50
    assert set(fit.intervals) == {"e_inf", "beta", "c", "alpha", "e0"}  # e0 is learned (changed in issue 19)
    assert all(lo <= hi for lo, hi in fit.intervals.values())


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fitter", ["pl", "m4"])
def test_too_few_points(fitter):
    f = (lambda x, e: fit_power_law(x, e)) if fitter == "pl" else (lambda x, e: fit_m4(x, e, 0.9))
    with pytest.raises(ValueError, match=r"too few points.*got 3, need at least 4"):
        f([1.0, 2.0, 3.0], [0.5, 0.4, 0.3])


@pytest.mark.parametrize("fitter", ["pl", "m4"])
def test_non_positive_errors(fitter):
    f = (lambda x, e: fit_power_law(x, e)) if fitter == "pl" else (lambda x, e: fit_m4(x, e, 0.9))
    with pytest.raises(ValueError, match=r"errors must be strictly positive"):
        f([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.4, 0.0, 0.3, 0.2])
    with pytest.raises(ValueError, match=r"compute|x must be strictly positive"):
        f([-1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.4, 0.35, 0.3, 0.2])


@pytest.mark.parametrize("fitter", ["pl", "m4"])
def test_mismatched_lengths(fitter):
    f = (lambda x, e: fit_power_law(x, e)) if fitter == "pl" else (lambda x, e: fit_m4(x, e, 0.9))
    with pytest.raises(ValueError, match=r"mismatched lengths \(5 vs 4\)"):
        f([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.4, 0.3, 0.2])


def test_non_finite_and_m4_e0_violations():
    with pytest.raises(ValueError, match="non-finite"):
        fit_power_law([1.0, 2.0, 3.0, 4.0], [0.5, np.nan, 0.3, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        fit_m4([1.0, 2.0, np.inf, 4.0], [0.5, 0.4, 0.3, 0.2], 0.9)
    with pytest.raises(ValueError, match="below e0"):
        fit_m4([1.0, 2.0, 3.0, 4.0], [0.95, 0.4, 0.3, 0.2], 0.9)
    with pytest.raises(ValueError, match="mismatched lengths"):
        pareto_frontier([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([1.0, 1.0, 2.0, 2.0, 3.0], [0.5, 0.5, 0.4, 0.4, 0.3])


# --------------------------------------------------------------------------- extrapolation
def test_extrapolation_check_power_law_data():
    rng = np.random.default_rng(11)
    C = np.logspace(0.5, 4.5, 30)  # errors stay below e0 = 0.999 for M4
    E = power_law(C, **TRUE_PL) * np.exp(0.01 * rng.standard_normal(C.size))
    # dominated runs that must not be used for fitting or as targets
    C_bad = rng.uniform(10, 3e4, size=20)
    E_bad = power_law(C_bad, **TRUE_PL) * 1.1
    x, e = np.r_[C, C_bad], np.r_[E, E_bad]
    # the default score="frontier": dominated runs are not targets
    out = extrapolation_check(x, e, cut=3e3, e0=0.999, fitters=("power_law", "m4"))
    assert out["n_train"] >= 10 and out["n_test"] >= 3
    assert max(out["train_x"]) < 3e3 <= min(out["test_x"])
    assert not set(out["test_x"]) & set(C_bad.tolist())
    assert not set(out["train_x"]) & set(C_bad.tolist())
    pl = out["results"]["power_law"]
    true_test = power_law(np.array(out["test_x"]), **TRUE_PL)
    # 1% noise, extrapolating ~1.2 decades: a few percent error at most
    assert pl["rmse_log"] < 0.08
    assert pl["mare"] < 0.08
    np.testing.assert_allclose(pl["pred"], true_test, rtol=0.1)
    m4 = out["results"]["m4"]
    assert len(m4["pred"]) == out["n_test"]
    assert np.isfinite(m4["rmse_log"]) and m4["rmse_log"] < 0.3


def test_extrapolation_check_m4_data_and_errors():
    x = np.logspace(2, 8, 30)
    e = m4_truth(x, **TRUE_M4)
    out = extrapolation_check(x, e, cut=1e6, e0=TRUE_M4["e0"], fitters=("m4",))
    assert out["results"]["m4"]["rmse_log"] < 1e-6
    with pytest.raises(ValueError, match="e0"):
        extrapolation_check(x, e, cut=1e6)
    with pytest.raises(ValueError, match="too few training points"):
        extrapolation_check(x, e, cut=300.0, fitters=("power_law",))
    with pytest.raises(ValueError, match="no evaluation points"):
        extrapolation_check(x, e, cut=1e9, fitters=("power_law",))


def test_extrapolation_check_can_score_all_held_out_points():
    rng = np.random.default_rng(11)
    C = np.logspace(0.5, 4.5, 30)
    E = power_law(C, **TRUE_PL) * np.exp(0.01 * rng.standard_normal(C.size))
    C_bad = rng.uniform(10, 3e4, size=20)
    E_bad = power_law(C_bad, **TRUE_PL) * 1.1
    x, e = np.r_[C, C_bad], np.r_[E, E_bad]
    assert extrapolation_check(x, e, cut=3e3, fitters=("M1",))["score"] == "frontier"
    out = extrapolation_check(x, e, cut=3e3, fitters=("power_law", "M1"), score="all")
    assert out["score"] == "all"
    assert out["n_test"] == int(np.sum(x >= 3e3))  # every run at or above the cut
    assert not set(out["train_x"]) & set(C_bad.tolist())  # the fit still uses the frontier only
    pl = out["results"]["power_law"]
    assert pl["rmse_log"] == pytest.approx(rmse_log(pl["pred"], out["test_e"]))
    with pytest.raises(ValueError, match="score must be 'all' or 'frontier', got 'best'"):
        extrapolation_check(x, e, cut=3e3, fitters=("power_law",), score="best")
    with pytest.raises(ValueError, match="unknown fitter 'M5'"):
        extrapolation_check(x, e, cut=3e3, fitters=("M5",))


# --------------------------------------------------------------------------- M1, M2, M3
def m3_truth(x, beta, c, gamma):
    return beta * (1.0 / x + gamma) ** c


def test_m1_m2_m3_recover_parameters_noiseless():
    x = np.logspace(6, 9, 30)
    f1 = fit_m1(x, 40.0 * x**-0.25)
    assert f1.params["beta"] == pytest.approx(40.0, rel=1e-9)
    assert f1.params["c"] == pytest.approx(-0.25, rel=1e-9)
    f2 = fit_m2(x, 0.2 + 40.0 * x**-0.25)
    for k, v in {"e_inf": 0.2, "beta": 40.0, "c": -0.25}.items():
        assert f2.params[k] == pytest.approx(v, rel=1e-5), k
    assert f2.at_bound == []
    truth = dict(beta=300.0, c=0.35, gamma=2e-8)
    f3 = fit_m3(x, m3_truth(x, **truth))
    for k, v in truth.items():
        assert f3.params[k] == pytest.approx(v, rel=1e-5), k
    x_new = np.logspace(9, 10, 4)
    np.testing.assert_allclose(f3.predict(x_new), m3_truth(x_new, **truth), rtol=1e-6)
    np.testing.assert_allclose(f2.predict(x_new), 0.2 + 40.0 * x_new**-0.25, rtol=1e-6)
    for f in (f1, f2, f3):
        assert f.rmse_log < 1e-7
        json.dumps(f.as_dict())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_m1_m2_m3_recover_parameters_with_noise(seed):
    rng = np.random.default_rng(seed)
    x = np.logspace(6, 9, 40)
    noise = np.exp(0.01 * rng.standard_normal(x.size))
    f1 = fit_m1(x, 40.0 * x**-0.25 * noise)
    assert f1.params["c"] == pytest.approx(-0.25, abs=0.01)
    true2 = 0.2 + 40.0 * x**-0.25
    f2 = fit_m2(x, true2 * noise)
    assert f2.params["e_inf"] == pytest.approx(0.2, abs=0.03)
    assert f2.params["c"] == pytest.approx(-0.25, rel=0.3)
    np.testing.assert_allclose(f2.predict(x), true2, rtol=0.01)
    truth = dict(beta=300.0, c=0.35, gamma=2e-8)
    f3 = fit_m3(x, m3_truth(x, **truth) * noise)
    assert f3.params["c"] == pytest.approx(0.35, rel=0.15)
    np.testing.assert_allclose(f3.predict(x), m3_truth(x, **truth), rtol=0.01)


def test_m4_recovers_curve_with_noise_and_learned_e0():
    rng = np.random.default_rng(5)
    x = np.logspace(2, 7, 40)
    e_true = m4_truth(x, **TRUE_M4)
    fit = fit_m4(x, e_true * np.exp(0.005 * rng.standard_normal(x.size)), e0=0.999)
    np.testing.assert_allclose(fit.predict(x), e_true, rtol=0.02)
    assert fit.c == pytest.approx(TRUE_M4["c"], rel=0.3)
    assert fit.e0 == pytest.approx(TRUE_M4["e0"], abs=0.05)


def test_m4_reports_e_inf_on_its_bound():
    # a pure power law in excess error with e_inf = 0 and alpha = 0: both sit on their bounds
    x = np.logspace(3, 7, 20)
    fit = fit_m4(x, 5.0 * x**-0.3, e0=0.999)
    assert "e_inf" in fit.at_bound and fit.e_inf == 0.0


def test_fit_law_common_interface():
    x = np.logspace(2, 7, 25)
    e = m4_truth(x, **TRUE_M4)
    for name in LAWS:
        f = fit_law(name, x, e, e0=0.999)
        assert isinstance(f.params, dict) and f.params
        assert isinstance(f.at_bound, list)
        assert f.rmse_log_on(x, e) == pytest.approx(f.rmse_log, rel=1e-9)
        assert np.all(np.isfinite(f.predict(x)))
    assert fit_law("m4", x, e, e0=0.999).rmse_log < 1e-8  # alias, and M4 fits its own law exactly
    with pytest.raises(ValueError, match="unknown law 'M9'; choose from power_law, M1, M2, M3, M4"):
        fit_law("M9", x, e)


# --------------------------------------------------------------------------- honest fits
def test_power_law_on_short_curve_reports_bound_not_huge_coefficient():
    # 16 points of an exponential decay: no power law fits it; before issue 19 this gave
    # b = 10 (an unreported bound) and a = 2.7e15
    C = np.linspace(1.0, 16.0, 16)
    fit = fit_power_law(C, 0.1 + 0.5 * np.exp(-C / 4.0), n_bootstrap=0)
    assert "b" in fit.at_bound and fit.b == pytest.approx(2.0)
    assert fit.a < 1e3
    assert fit.as_dict()["at_bound"] == fit.at_bound
    clean = fit_power_law(np.logspace(0, 4, 25), power_law(np.logspace(0, 4, 25), **TRUE_PL), n_bootstrap=0)
    assert clean.at_bound == []


def test_resolved_intervals():
    assert resolved((0.3, 0.5))
    assert resolved((-0.5, -0.3))
    assert not resolved((1e3, 1e113))  # spans orders of magnitude
    assert not resolved((0.0, 0.05))  # reaches zero
    assert not resolved((-0.1, 0.2))
    assert not resolved((1.0, float("inf")))
    assert resolved((1.0, 20.0), max_ratio=30.0) and not resolved((1.0, 20.0))
    rng = np.random.default_rng(7)
    C = np.logspace(0, 4, 25)
    fit = fit_power_law(C, power_law(C, **TRUE_PL) * np.exp(0.02 * rng.standard_normal(C.size)), n_bootstrap=60)
    assert fit.unresolved == [k for k, v in fit.intervals.items() if not resolved(v)]
    assert "b" not in fit.unresolved


# --------------------------------------------------------------------------- benchmark (M4 paper's curves)
# RMSE(log loss) on the Training=0 rows of tests/data/scaling_benchmark_vision.csv (a subset of the
# public benchmark.vision.csv; see tests/data/README.md), fitted on its Training=1 rows.
BENCH_M4 = {
    "IC/bird_5/MiX/B/16": 0.016676988550957107,
    "IC/bird_10/MiX/B/16": 0.032170934989239744,
    "IC/bird_25/MiX/B/16": 0.01388631926961034,
    "IC/c_5/MiX/B/16": 0.0345854334474368,
}
# the authors' M4 (their code, run as their README calls it, on the same rows): measured, not recomputed here
AUTHORS_M4_MEAN = 0.02549


def _load_bench():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "scaling_laws.py"
    spec = importlib.util.spec_from_file_location("scaling_laws_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # fits every law on four public curves (~9 s)
def test_benchmark_m4_per_curve_and_against_the_authors(capsys):
    bench = _load_bench()
    res = bench.run(bench.read_curves(bench.DEFAULT_CSV))
    got = {r["curve"]: r["M4"] for r in res["curves"]}
    assert got.keys() == BENCH_M4.keys()
    for k, v in BENCH_M4.items():
        assert got[k] == pytest.approx(v, rel=1e-3), k
    assert res["mean"]["M4"] < AUTHORS_M4_MEAN  # the target: at most 1.1x theirs; it beats it
    # M4 as published is the best law on average; holding e0 fixed is worse (why it is not the default)
    assert res["mean"]["M4"] == min(res["mean"].values())
    assert res["mean"]["M4_fixed_e0"] > 2 * res["mean"]["M4"]
    bench.main([])
    out = capsys.readouterr().out
    assert "IC/bird_25/MiX/B/16" in out and "mean" in out


def test_benchmark_reader_errors(tmp_path):
    bench = _load_bench()
    bad = tmp_path / "bad.csv"
    bad.write_text("Domain,Task,Model,Loss,Training\nIC,a,b,0.5,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Seen Examples'\]"):
        bench.read_curves(bad)
    with pytest.raises(ValueError, match="no curves in domain 'LM'"):
        bench.read_curves(bench.DEFAULT_CSV, domain="LM")


def test_a_law_too_steep_for_float_range_fails_with_a_reason_not_an_overflow():
    """Found by `make demo`'s 4-run slice: M3 fitted to a plateau's steep edge put its scale at e^1379
    (OverflowError in the report). Exact M3 data with c = 50 around x = 1e12: the scale beta = 0.1 x 1e600
    is beyond float64, so the fit says the points do not determine the law."""
    x = np.linspace(0.95e12, 1.05e12, 5)
    e = 0.1 * (1e12 / x) ** 50  # M3 with gamma = 0, c = 50, beta = 0.1 * 1e12**50
    with pytest.raises(ValueError, match=r"M3's fit is degenerate: exponent c = 50"):
        fit_law("M3", x, e)
    small = fit_law("M3", x / 1e10, e)  # the same curve at x around 100: beta = 0.1 * 100**50, in range
    assert small.params["c"] == pytest.approx(50, rel=1e-6)
    assert small.params["beta"] == pytest.approx(0.1 * 100.0**50, rel=1e-3)  # c is exact to 1e-6: x^c amplifies it
