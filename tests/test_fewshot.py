"""Tests for vitscale.evaluators.fewshot_lsr against independent references (numpy, scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from vitscale.evaluators import fewshot_lsr as fs

L2 = 2.0**10


def _pm1(y: np.ndarray, c: int) -> np.ndarray:
    """Independent ±1 one-vs-rest encoding."""
    return np.where(y[:, None] == np.arange(c)[None, :], 1.0, -1.0)


def _np_standardize(train: np.ndarray, test: np.ndarray, floor: float = 1e-5):
    mu = np.mean(train, axis=0)
    sd = np.sqrt(np.mean((train - mu) ** 2, axis=0))
    sd = np.where(sd < floor, floor, sd)
    return (train - mu) / sd, (test - mu) / sd


def _design(n: int, d: int, c: int, seed: int):
    """Standardized + bias-augmented features, ±1 targets, and a test set."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(c, d))
    y = np.arange(n) % c
    x = means[y] + rng.normal(size=(n, d))
    yt = rng.integers(0, c, size=50)
    xt = means[yt] + rng.normal(size=(50, d))
    z, zt = _np_standardize(x, xt)
    ones = lambda a: np.hstack([a, np.ones((a.shape[0], 1))])  # noqa: E731
    return ones(z), _pm1(y, c), ones(zt)


def _assert_weights_close(w: np.ndarray, ref: np.ndarray, rtol: float = 1e-6) -> None:
    assert w.shape == ref.shape
    assert np.linalg.norm(w - ref) <= rtol * np.linalg.norm(ref)
    np.testing.assert_allclose(w, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


# --------------------------------------------------------------------------- #
# Solver vs scikit-learn
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "n,d,c,expected_form",
    [(300, 40, 5, "primal"), (30, 200, 6, "dual"), (41, 40, 3, "primal")],
)
def test_ridge_matches_sklearn_in_both_regimes(n, d, c, expected_form):
    x, y, xt = _design(n, d, c, seed=n + d)
    assert (x.shape[0] >= x.shape[1]) == (expected_form == "primal")
    # SVD solver: a different algorithm from our normal-equation solve.
    ref = Ridge(alpha=L2, fit_intercept=False, solver="svd").fit(x, y)
    w_ref = ref.coef_.T
    w = fs.ridge_solve(x, y, L2)
    _assert_weights_close(w, w_ref)
    np.testing.assert_array_equal(np.argmax(xt @ w, 1), np.argmax(ref.predict(xt), 1))
    # Forcing either form gives the same solution on the same data.
    w_p = fs.ridge_solve(x, y, L2, form="primal")
    w_d = fs.ridge_solve(x, y, L2, form="dual")
    _assert_weights_close(w_p, w_ref)
    _assert_weights_close(w_d, w_ref)
    _assert_weights_close(w_p, w_d)
    np.testing.assert_array_equal(np.argmax(xt @ w_p, 1), np.argmax(xt @ w_d, 1))


def test_ridge_small_l2_and_vector_target_match_sklearn():
    x, y, _ = _design(25, 60, 4, seed=3)
    for l2 in (1e-2, 1.0, 2.0**14):
        ref = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(x, y).coef_.T
        _assert_weights_close(fs.ridge_solve(x, y, l2, form="dual"), ref)
    # 1-D target -> 1-D weights.
    ref1 = Ridge(alpha=L2, fit_intercept=False, solver="svd").fit(x, y[:, 0]).coef_
    w1 = fs.ridge_solve(x, y[:, 0], L2)
    assert w1.shape == (x.shape[1],)
    _assert_weights_close(w1, ref1)


def test_ridge_float32_input_is_solved_in_float64():
    x, y, _ = _design(20, 80, 3, seed=5)
    w = fs.ridge_solve(x.astype(np.float32), y.astype(np.float32), L2)
    assert w.dtype == np.float64
    ref = Ridge(alpha=L2, fit_intercept=False, solver="svd").fit(x.astype(np.float32).astype(np.float64), y).coef_.T
    _assert_weights_close(w, ref)


def test_ridge_validation():
    x, y, _ = _design(10, 5, 2, seed=0)
    with pytest.raises(ValueError, match="form"):
        fs.ridge_solve(x, y, L2, form="svd")
    with pytest.raises(ValueError, match="l2"):
        fs.ridge_solve(x, y, 0.0)
    with pytest.raises(ValueError, match="l2"):
        fs.ridge_solve(x, y, float("nan"))
    with pytest.raises(ValueError, match="x has 10 rows but y has 9"):
        fs.ridge_solve(x, y[:9], L2)
    xb = x.copy()
    xb[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"x contains 1 non-finite.*inf.*\(2, 3\)"):
        fs.ridge_solve(xb, y, L2)


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #
def _labels(seed: int = 0, c: int = 7, per: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(c), per + np.arange(c)))


@pytest.mark.parametrize("k", [1, 5, 25])
def test_sample_exactly_k_per_class_and_deterministic(k):
    y = _labels()
    idx = fs.sample_few_shot(y, k, seed=0)
    assert idx.dtype == np.int64
    assert len(np.unique(idx)) == len(idx) == 7 * k
    np.testing.assert_array_equal(np.bincount(y[idx], minlength=7), np.full(7, k))
    np.testing.assert_array_equal(idx, fs.sample_few_shot(y, k, seed=0))
    np.testing.assert_array_equal(idx, fs.sample_few_shot(y, k, 0, num_classes=7))
    others = [fs.sample_few_shot(y, k, seed=s) for s in (1, 2)]
    for o in others:
        assert set(o.tolist()) != set(idx.tolist())


def test_sample_nested_across_shots_for_a_seed():
    y = _labels()
    small = fs.sample_few_shot(y, 5, seed=1)
    big = fs.sample_few_shot(y, 10, seed=1)
    assert set(small.tolist()) <= set(big.tolist())


def test_sample_errors():
    y = np.array([0] * 10 + [1] * 3 + [2] * 10 + [3] * 2)
    with pytest.raises(ValueError, match=r"shots=5.*class 1 has 3.*class 3 has 2"):
        fs.sample_few_shot(y, 5, seed=0)
    # Missing class when num_classes is explicit.
    with pytest.raises(ValueError, match="class 4 has 0"):
        fs.sample_few_shot(y, 2, seed=0, num_classes=5)
    for bad in (0, -1, 2.0, True, "5"):
        with pytest.raises(ValueError, match="shots"):
            fs.sample_few_shot(y, bad, seed=0)
    with pytest.raises(ValueError, match="labels"):
        fs.sample_few_shot(y.astype(float), 1, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        fs.sample_few_shot(y, 1, seed=0, num_classes=3)


# --------------------------------------------------------------------------- #
# Standardization / bias
# --------------------------------------------------------------------------- #
def test_standardize_uses_train_stats_with_floor():
    rng = np.random.default_rng(0)
    tr = rng.normal(loc=3.0, scale=2.0, size=(12, 6))
    tr[:, 4] = 7.0  # constant on the few-shot set -> std floor
    te = rng.normal(loc=-5.0, scale=10.0, size=(40, 6))
    z, zt = fs.standardize(tr.astype(np.float32), te.astype(np.float32))
    rz, rzt = _np_standardize(tr.astype(np.float32).astype(np.float64), te.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(z, rz, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(zt, rzt, rtol=1e-12, atol=1e-9)
    assert np.all(np.isfinite(z)) and np.all(z[:, 4] == 0.0)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    # Test features are NOT re-centred with their own stats.
    assert np.abs(zt.mean(0)[:4]).min() > 1.0
    xb = fs.add_bias(z)
    assert xb.shape == (12, 7) and np.all(xb[:, -1] == 1.0)
    np.testing.assert_array_equal(xb[:, :-1], z)


def test_standardize_validation():
    a = np.zeros((3, 4))
    with pytest.raises(ValueError, match="train_x has 4 features but test_x has 5"):
        fs.standardize(a, np.zeros((2, 5)))
    b = a.copy()
    b[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"test_x contains 1 non-finite.*nan.*\(1, 1\)"):
        fs.standardize(a, b)


# --------------------------------------------------------------------------- #
# End-to-end accuracy
# --------------------------------------------------------------------------- #
def _clusters(c=10, d=64, n_train=40, n_test=30, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=sep, size=(c, d)) + 50.0  # offset: needs standardizing
    ytr = np.repeat(np.arange(c), n_train)
    yte = np.repeat(np.arange(c), n_test)
    xtr = centers[ytr] + rng.normal(size=(len(ytr), d))
    xte = centers[yte] + rng.normal(size=(len(yte), d))
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


def test_fewshot_accuracy_matches_sklearn_pipeline():
    xtr, ytr, xte, yte = _clusters(c=6, d=48, sep=0.4, seed=1)
    for k, seed in [(1, 0), (5, 1), (25, 2)]:
        idx = fs.sample_few_shot(ytr, k, seed)
        x, y = xtr[idx].astype(np.float64), ytr[idx]
        z, zt = _np_standardize(x, xte.astype(np.float64))
        z = np.hstack([z, np.ones((len(z), 1))])
        zt = np.hstack([zt, np.ones((len(zt), 1))])
        pred = Ridge(alpha=L2, fit_intercept=False, solver="svd").fit(z, _pm1(y, 6)).predict(zt)
        ref_acc = float(np.mean(np.argmax(pred, 1) == yte))
        acc = fs.fewshot_accuracy(xtr[idx], ytr[idx], xte, yte, 6, L2)
        assert acc == ref_acc
        assert 0.0 < acc < 1.0  # non-trivial, so the comparison is informative


def test_evaluate_features_easy_problem_and_per_seed_reference():
    xtr, ytr, xte, yte = _clusters()
    res = fs.evaluate_features(xtr, ytr, xte, yte)
    assert list(res) == ["1shot", "5shot", "10shot", "25shot"]
    for r in res.values():
        assert len(r["per_seed"]) == 3
        assert r["mean"] == pytest.approx(np.mean(r["per_seed"]))
        assert r["std"] == pytest.approx(np.std(r["per_seed"]))
    assert res["5shot"]["mean"] > 0.95
    assert res["25shot"]["mean"] > 0.95
    # per_seed[i] is exactly the single-run accuracy for seed i.
    idx = fs.sample_few_shot(ytr, 10, seed=2, num_classes=10)
    assert res["10shot"]["per_seed"][2] == fs.fewshot_accuracy(xtr[idx], ytr[idx], xte, yte, 10)


def test_random_labels_give_chance():
    rng = np.random.default_rng(7)
    c = 5
    xtr = rng.normal(size=(400, 32))
    ytr = rng.integers(0, c, size=400)
    xte = rng.normal(size=(3000, 32))
    yte = rng.integers(0, c, size=3000)
    res = fs.evaluate_features(xtr, ytr, xte, yte, shots=(5, 25), seeds=(0, 1, 2))
    for r in res.values():
        assert abs(r["mean"] - 1.0 / c) < 0.05


def test_flatten_keys():
    res = {
        "1shot": {"mean": 0.5, "std": 0.1, "per_seed": [0.4, 0.5, 0.6]},
        "10shot": {"mean": 0.9, "std": 0.0, "per_seed": [0.9]},
    }
    flat = fs.flatten("mnist_5k", res)
    assert flat == {
        "fewshot/mnist_5k/1shot": 0.5,
        "fewshot/mnist_5k/1shot_std": 0.1,
        "fewshot/mnist_5k/10shot": 0.9,
        "fewshot/mnist_5k/10shot_std": 0.0,
    }
    assert all(type(v) is float for v in flat.values())


def test_evaluate_features_validation():
    xtr, ytr, xte, yte = _clusters(c=3, d=8, n_train=6, n_test=4)
    with pytest.raises(ValueError, match="shots"):
        fs.evaluate_features(xtr, ytr, xte, yte, shots=(1, 0))
    with pytest.raises(ValueError, match="shots"):
        fs.evaluate_features(xtr, ytr, xte, yte, shots=(1, 2.5))
    with pytest.raises(ValueError, match="shots"):
        fs.evaluate_features(xtr, ytr, xte, yte, shots=(2, 2))
    with pytest.raises(ValueError, match="seeds"):
        fs.evaluate_features(xtr, ytr, xte, yte, shots=(1,), seeds=(-1,))
    with pytest.raises(ValueError, match="train_x has 18 rows but train_y has 17"):
        fs.evaluate_features(xtr, ytr[:-1], xte, yte, shots=(1,))
    with pytest.raises(ValueError, match="test_x has 12 rows but test_y has 11"):
        fs.evaluate_features(xtr, ytr, xte, yte[:-1], shots=(1,))
    bad = xtr.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"train_x contains 1 non-finite.*nan"):
        fs.evaluate_features(bad, ytr, xte, yte, shots=(1,))
    with pytest.raises(ValueError, match="class 0 has 6"):
        fs.evaluate_features(xtr, ytr, xte, yte, shots=(1, 10))
    with pytest.raises(ValueError, match="test_y has label 3 but num_classes=3"):
        fs.evaluate_features(xtr, ytr, xte, np.where(yte == 2, 3, yte), shots=(1,), num_classes=3)
