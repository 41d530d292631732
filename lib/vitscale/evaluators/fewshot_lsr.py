"""Closed-form few-shot linear evaluation ("fewshot_lsr") on frozen features.

This is the evaluator used by "Scaling Vision Transformers" (Zhai et al.,
CVPR 2022) and big_vision's `evaluators/fewshot_lsr.py`: for every shot
count `k` and seed, draw exactly `k` training images per class, standardize
their frozen features with the few-shot set's own statistics, append a bias
column, fit L2-regularised least squares to {-1, +1} one-vs-rest targets in
closed form and score top-1 accuracy of `argmax(x_test @ W)` on the full
test split.

The name is big_vision's; `evaluators/fewshot.py` beside it feeds it (the
splits through the input pipeline, the model's frozen features over the mesh).

Everything is plain numpy in float64: the few-shot set has at most
`25 * num_classes` rows and features are at most a few thousand wide, so the
exact solve is cheap on CPU and independent of the accelerator.

Conventions (deliberate; see the notes on each function):

* **Sampling** -- one `np.random.default_rng(seed)` permutation of every
  class's indices, then the first `k`.  Hence, for one seed, the 1-shot set
  is contained in the 5-shot set, which is contained in the 10-shot set, ...
  (the same nesting as big_vision).
* **Standardization** -- per-feature mean and *population* std (ddof=0) of the
  few-shot set; the std is floored at `STD_FLOOR` (`max(std, 1e-5)`) so a
  feature that is constant on the few-shot set maps to 0 instead of dividing by
  zero.  The same mean/std is applied to the test features.  (big_vision adds
  1e-5 to the std instead of flooring; the difference is ~1e-5 relative for any
  feature that actually varies.)
* **Bias** -- a constant column (`BIAS_VALUE = 1.0`) regularised like every
  other weight, i.e. exactly `sklearn.linear_model.Ridge(alpha=l2,
  fit_intercept=False)` on the augmented features.  big_vision instead uses a
  constant of 100 so that the bias is almost unregularised; pass
  `bias_value=100.0` to reproduce that.
* **Spread over seeds** -- `std` is the population std (`np.std`, ddof=0)
  of the per-seed accuracies.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from vitscale import metrics

__all__ = [
    "BIAS_VALUE",
    "DEFAULT_L2",
    "DEFAULT_SEEDS",
    "DEFAULT_SHOTS",
    "STD_FLOOR",
    "add_bias",
    "evaluate_features",
    "fewshot_accuracy",
    "flatten",
    "ridge_solve",
    "sample_few_shot",
    "standardize",
]

DEFAULT_SHOTS: tuple[int, ...] = (1, 5, 10, 25)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
DEFAULT_L2: float = 2.0**10
STD_FLOOR: float = 1e-5
BIAS_VALUE: float = 1.0

_FORMS = ("auto", "primal", "dual")


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _check_features(x: np.ndarray, name: str) -> np.ndarray:
    """Return `x` as a 2-D float64 array; raise ValueError naming `name`."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [num_examples, num_features], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        i, j = (int(v) for v in bad[0])
        raise ValueError(f"{name} contains {len(bad)} non-finite value(s); first is {arr[i, j]!r} at index ({i}, {j})")
    return arr


def _check_labels(y: np.ndarray, name: str, num_classes: int | None = None) -> np.ndarray:
    """Return `y` as a 1-D int64 array; raise ValueError naming `name`."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [num_examples], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative, got min label {int(arr.min())}")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise ValueError(f"{name} has label {int(arr.max())} but num_classes={num_classes}")
    return arr


def _check_num_classes(num_classes: object) -> int:
    if not _is_int(num_classes) or int(num_classes) < 1:  # type: ignore[arg-type]
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)  # type: ignore[arg-type]


def _check_l2(l2: object) -> float:
    if isinstance(l2, (bool, np.bool_)) or not isinstance(l2, numbers.Real):
        raise ValueError(f"l2 must be a positive finite number, got {l2!r}")
    val = float(l2)
    if not np.isfinite(val) or val <= 0:
        raise ValueError(f"l2 must be a positive finite number, got {l2!r}")
    return val


def _check_same_length(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{xname} has {x.shape[0]} rows but {yname} has {y.shape[0]} labels; they must match")


def _check_int_tuple(values: object, name: str, minimum: int) -> tuple[int, ...]:
    if _is_int(values):
        values = (values,)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
        raise ValueError(f"{name} must be a sequence of ints, got {values!r}")
    out = []
    for v in values:
        if not _is_int(v) or int(v) < minimum:
            kind = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{name} must contain only {kind} ints, got {v!r} in {tuple(values)!r}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not contain duplicates, got {tuple(out)!r}")
    return tuple(out)


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #
def sample_few_shot(labels: np.ndarray, shots: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of exactly `shots` examples of every class, deterministic in `seed`.

    Classes are `range(num_classes)` if given, else the distinct labels
    present.  For each class (in increasing order) the class's indices are
    permuted with `np.random.default_rng(seed)` and the first `shots` taken,
    so for a fixed seed smaller shot sets are prefixes of larger ones.  The
    result is grouped by class: `shots` indices of the first class, then of
    the second, ... (int64, length `shots * num_classes`).

    Raises ValueError if `shots` is not a positive int, or if any class has
    fewer than `shots` examples (the message lists those classes and counts).
    """
    if not _is_int(shots) or int(shots) <= 0:
        raise ValueError(f"shots must be a positive int, got {shots!r}")
    shots = int(shots)
    if not _is_int(seed) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes)
    y = _check_labels(labels, "labels", num_classes)
    if y.size == 0:
        raise ValueError("labels must not be empty")

    classes = np.arange(num_classes) if num_classes is not None else np.unique(y)
    counts = np.bincount(y, minlength=int(classes.max()) + 1 if classes.size else 0)
    short = [(int(c), int(counts[c])) for c in classes if counts[c] < shots]
    if short:
        shown = ", ".join(f"class {c} has {n}" for c, n in short[:20])
        more = f" (and {len(short) - 20} more classes)" if len(short) > 20 else ""
        raise ValueError(f"cannot draw shots={shots} examples per class: {shown}{more}")

    rng = np.random.default_rng(int(seed))
    picked = [rng.permutation(np.flatnonzero(y == c))[:shots] for c in classes]
    return np.concatenate(picked).astype(np.int64, copy=False)


# --------------------------------------------------------------------------- #
# Feature preprocessing
# --------------------------------------------------------------------------- #
def standardize(train_x: np.ndarray, test_x: np.ndarray, std_floor: float = STD_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """Z-score both arrays with `train_x`'s per-feature mean and std (float64).

    The std is the population std (ddof=0) floored at `std_floor` so that
    features constant on `train_x` become 0 rather than NaN/inf.  `test_x`
    uses the *same* (few-shot) statistics.
    """
    tr = _check_features(train_x, "train_x")
    te = _check_features(test_x, "test_x")
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train_x has {tr.shape[1]} features but test_x has {te.shape[1]}; they must match")
    if tr.shape[0] == 0:
        raise ValueError("train_x must have at least one row to compute statistics")
    mean = tr.mean(axis=0)
    std = np.maximum(tr.std(axis=0), std_floor)
    return (tr - mean) / std, (te - mean) / std


def add_bias(x: np.ndarray, value: float = BIAS_VALUE) -> np.ndarray:
    """Append a constant column (default 1.0) to 2-D `x`; returns float64."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {arr.shape}")
    return np.concatenate([arr, np.full((arr.shape[0], 1), float(value))], axis=1)


def _pm1_targets(y: np.ndarray, num_classes: int) -> np.ndarray:
    """One-vs-rest targets in {-1, +1}, shape [n, num_classes], float64."""
    t = -np.ones((y.shape[0], num_classes), dtype=np.float64)
    t[np.arange(y.shape[0]), y] = 1.0
    return t


# --------------------------------------------------------------------------- #
# Solver
# --------------------------------------------------------------------------- #
def ridge_solve(x: np.ndarray, y: np.ndarray, l2: float, form: str = "auto") -> np.ndarray:
    """Closed-form ridge regression without intercept, in float64.

    Minimises `||x W - y||^2 + l2 ||W||^2` and returns `W` of shape
    `[d, c]` (`[d]` if `y` is 1-D).  `form` chooses the identity used:

    * `"primal"`: `W = (x^T x + l2 I_d)^-1 x^T y`  (a d x d solve)
    * `"dual"`:   `W = x^T (x x^T + l2 I_n)^-1 y`  (an n x n solve)
    * `"auto"`:   primal if `n >= d` else dual (the smaller system).

    Both are exact and agree to rounding for `l2 > 0`.  Matches
    `sklearn.linear_model.Ridge(alpha=l2, fit_intercept=False).coef_.T`.
    """
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    l2 = _check_l2(l2)
    xx = _check_features(x, "x")
    yy = np.asarray(y)
    vector_target = yy.ndim == 1
    if vector_target:
        yy = yy[:, None]
    if yy.ndim != 2:
        raise ValueError(f"y must be 1-D or 2-D, got shape {np.shape(y)}")
    yy = _check_features(yy, "y")
    _check_same_length(xx, yy, "x", "y")

    n, d = xx.shape
    if form == "auto":
        form = "primal" if n >= d else "dual"
    if form == "primal":
        gram = xx.T @ xx
        gram[np.diag_indices_from(gram)] += l2
        w = np.linalg.solve(gram, xx.T @ yy)
    else:
        gram = xx @ xx.T
        gram[np.diag_indices_from(gram)] += l2
        w = xx.T @ np.linalg.solve(gram, yy)
    return w[:, 0] if vector_target else w


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #
def fewshot_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    l2: float = DEFAULT_L2,
    *,
    form: str = "auto",
    bias_value: float = BIAS_VALUE,
    std_floor: float = STD_FLOOR,
) -> float:
    """Top-1 test accuracy of the closed-form ridge classifier fit on `train_x`.

    `train_x`/`train_y` is the (already sampled) few-shot set.  Features are
    standardized with its statistics, a bias column is appended, ±1
    one-vs-rest targets are regressed with `ridge_solve` and test predictions
    are `argmax(test_z @ W)`.
    """
    num_classes = _check_num_classes(num_classes)
    tr_x = _check_features(train_x, "train_x")
    te_x = _check_features(test_x, "test_x")
    tr_y = _check_labels(train_y, "train_y", num_classes)
    te_y = _check_labels(test_y, "test_y", num_classes)
    _check_same_length(tr_x, tr_y, "train_x", "train_y")
    _check_same_length(te_x, te_y, "test_x", "test_y")
    if te_y.size == 0:
        raise ValueError("test_x/test_y must contain at least one example")

    tr_z, te_z = standardize(tr_x, te_x, std_floor=std_floor)
    w = ridge_solve(add_bias(tr_z, bias_value), _pm1_targets(tr_y, num_classes), l2, form=form)
    preds = np.argmax(add_bias(te_z, bias_value) @ w, axis=1)
    return float(np.mean(preds == te_y))


def _check_splits(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Validated (train_x, train_y, test_x, test_y, num_classes); num_classes defaults to max label + 1."""
    tr_x = _check_features(train_x, "train_x")
    te_x = _check_features(test_x, "test_x")
    tr_y = _check_labels(train_y, "train_y")
    te_y = _check_labels(test_y, "test_y")
    _check_same_length(tr_x, tr_y, "train_x", "train_y")
    _check_same_length(te_x, te_y, "test_x", "test_y")
    if tr_x.shape[1] != te_x.shape[1]:
        raise ValueError(f"train_x has {tr_x.shape[1]} features but test_x has {te_x.shape[1]}; they must match")
    if tr_y.size == 0 or te_y.size == 0:
        raise ValueError("train and test splits must both be non-empty")
    if num_classes is None:
        num_classes = int(max(tr_y.max(), te_y.max())) + 1
    num_classes = _check_num_classes(num_classes)
    _check_labels(tr_y, "train_y", num_classes)
    _check_labels(te_y, "test_y", num_classes)
    return tr_x, tr_y, te_x, te_y, num_classes


def _summarize_seeds(per_shot: Mapping[int, Sequence[float]]) -> dict[str, dict[str, object]]:
    """Per shot count, the mean and population std of its per-seed accuracies, and the accuracies."""
    return {
        f"{k}shot": {
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs)),
            "per_seed": list(accs),
        }
        for k, accs in per_shot.items()
    }


def evaluate_features(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    l2: float = DEFAULT_L2,
    num_classes: int | None = None,
    *,
    form: str = "auto",
    bias_value: float = BIAS_VALUE,
    std_floor: float = STD_FLOOR,
) -> dict[str, dict[str, object]]:
    """Few-shot accuracy for every shot count, averaged over seeds.

    `train_x`/`test_x` are the frozen features (pre_logits) of the full
    train and test splits.  `num_classes` defaults to `max label + 1` over
    both splits; every class in `range(num_classes)` must have at least
    `max(shots)` training examples.

    Returns `{"<k>shot": {"mean": float, "std": float, "per_seed": [float,
    ...]}}` in the order of `shots`; `per_seed` follows `seeds` and
    `std` is the population std over seeds.
    """
    shots_t = _check_int_tuple(shots, "shots", minimum=1)
    seeds_t = _check_int_tuple(seeds, "seeds", minimum=0)
    l2 = _check_l2(l2)
    tr_x, tr_y, te_x, te_y, num_classes = _check_splits(train_x, train_y, test_x, test_y, num_classes)
    per_shot: dict[int, list[float]] = {k: [] for k in shots_t}
    for seed in seeds_t:
        for k in shots_t:
            idx = sample_few_shot(tr_y, k, seed, num_classes=num_classes)
            acc = fewshot_accuracy(
                tr_x[idx],
                tr_y[idx],
                te_x,
                te_y,
                num_classes,
                l2,
                form=form,
                bias_value=bias_value,
                std_floor=std_floor,
            )
            per_shot[k].append(acc)
    return _summarize_seeds(per_shot)


def flatten(name: str, result: Mapping[str, Mapping[str, object]]) -> dict[str, float]:
    """Flat metrics for metrics.jsonl from an `evaluate_features` result.

    `flatten("mnist_5k", res)` -> `{"fewshot/mnist_5k/10shot": mean,
    "fewshot/mnist_5k/10shot_std": std, ...}`.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    out: dict[str, float] = {}
    for key, stats in result.items():
        metric = metrics.fewshot(name, int(key.removesuffix("shot")))
        out[metric] = float(stats["mean"])  # type: ignore[arg-type]
        out[metrics.spread(metric)] = float(stats["std"])  # type: ignore[arg-type]
    return out
