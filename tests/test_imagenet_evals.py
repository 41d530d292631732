"""ImageNet-ReaL, ImageNet-v2 and ObjectNet evaluators against independent references: timm's
RealLabelsImagenet and hand counts; a hand-made ObjectNet folder with its mapping files."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch
from timm.data.real_labels import RealLabelsImagenet

from vitscale import data, sharding
from vitscale.evaluators import classify, real


def synthetic(n=300, classes=20, seed=0):
    """Logits, ReaL sets (some empty, some of several classes) and original labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes))
    sizes = rng.choice([0, 1, 1, 2, 3], size=n)
    sets = [sorted(rng.choice(classes, size=k, replace=False).tolist()) for k in sizes]
    original = rng.integers(0, classes, size=n)
    # Make the argmax hit the set often enough that the accuracy is not trivially near 1/classes.
    for i in range(0, n, 3):
        if sets[i]:
            logits[i, sets[i][0]] += 5.0
    return logits, sets, original


def test_real_accuracy_equals_timms_real_labels(tmp_path):
    logits, sets, original = synthetic()
    names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(len(sets))]
    (tmp_path / "real.json").write_text(json.dumps(sets))
    timm_real = RealLabelsImagenet(names, real_json=str(tmp_path / "real.json"), topk=(1,))
    for chunk in np.array_split(np.arange(len(sets)), 7):
        timm_real.add_result(torch.from_numpy(logits[chunk]))
    ours = real.real_accuracy(np.argmax(logits, -1), sets, original)
    assert ours["acc"] == pytest.approx(timm_real.get_accuracy(1) / 100, abs=1e-12)
    empty = sum(not s for s in sets)
    assert 0 < empty < len(sets) and ours["excluded_empty"] == empty and ours["images"] == len(sets) - empty


def test_real_accuracy_hand_count():
    # preds:      3      1         0     2      5
    sets = [[3, 4], [0, 2], [], [2], [1, 5, 7]]
    original = [3, 1, 0, 0, 1]
    out = real.real_accuracy([3, 1, 0, 2, 5], sets, original)
    # counted: images 0, 1, 3, 4 (image 2's set is empty); ReaL hits: 0, 3, 4; original hits: 0, 1.
    assert out == {"acc": 3 / 4, "original_acc": 2 / 4, "images": 4, "excluded_empty": 1}
    padded = [[3, 4, -1], [0, 2, -1], [-1, -1, -1], [2, -1, -1], [1, 5, 7]]  # as the batches carry them
    assert real.real_accuracy([3, 1, 0, 2, 5], padded, original) == out


def test_predict_in_order_with_padding_and_restricted_classes():
    """A logits function that reads the class off the image: predictions come back in order, the
    padded last batch is dropped, variable-length sets padded with -1, and `classes` restricts."""
    n, k = 11, 6
    rng = np.random.default_rng(1)
    target = rng.integers(0, k, size=n)
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[np.arange(n), 0, 0, 0] = (target * 40).astype(np.uint8)
    sets = tf.ragged.constant([[int(t)] * (i % 3 + 1) for i, t in enumerate(target)])
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": target, "real": sets})
    ds = ds.map(lambda ex: {**ex, "real": ex["real"]})
    pipe = data.Pipeline(image_size=4, channels=3, eval_ops=("value_range(0, 255)",))

    def logits(params, x):  # one-hot of round(pixel / 40) at (0, 0, 0), scaled
        return 10.0 * tf.one_hot(tf.cast(tf.round(x[:, 0, 0, 0] / 40.0), tf.int32), k).numpy()

    mesh = sharding.make_mesh([1, 1], devices=jax.devices()[:1])
    out = classify.predict(logits, None, classify.example_batches(ds, pipe, batch_size=4), mesh)
    assert out["pred"].tolist() == target.tolist() and out["label"].tolist() == target.tolist()
    assert out["real"].shape == (n, 3) and all((row[row >= 0] == t).all() for row, t in zip(out["real"], target))
    allowed = [c for c in range(k) if c != target[0]]
    restricted = classify.predict(logits, None, classify.example_batches(ds, pipe, batch_size=4), mesh, allowed)
    assert restricted["pred"][0] in allowed and np.isin(restricted["pred"], allowed).all()
