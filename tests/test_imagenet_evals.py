"""ImageNet-ReaL, ImageNet-v2 and ObjectNet evaluators against independent references: timm's
RealLabelsImagenet and hand counts; a hand-made ObjectNet folder with its mapping files."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch
from timm.data.real_labels import RealLabelsImagenet

from vitscale import sharding
from vitscale.data import pipeline
from vitscale.evaluators import classification, real


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
    pipe = pipeline.Pipeline(image_size=4, channels=3, eval_ops=("value_range(0, 255)",))

    def logits(params, x):  # one-hot of round(pixel / 40) at (0, 0, 0), scaled
        return 10.0 * tf.one_hot(tf.cast(tf.round(x[:, 0, 0, 0] / 40.0), tf.int32), k).numpy()

    mesh = sharding.make_mesh([1, 1], devices=jax.devices()[:1])
    out = classification.predict(logits, None, pipeline.eval_batches(ds, pipe, batch_size=4), mesh)
    assert out["pred"].tolist() == target.tolist() and out["label"].tolist() == target.tolist()
    assert out["real"].shape == (n, 3) and all((row[row >= 0] == t).all() for row, t in zip(out["real"], target))
    allowed = [c for c in range(k) if c != target[0]]
    restricted = classification.predict(logits, None, pipeline.eval_batches(ds, pipe, batch_size=4), mesh, allowed)
    assert restricted["pred"][0] in allowed and np.isin(restricted["pred"], allowed).all()


def make_objectnet(root, with_mappings=True):
    """A tiny ObjectNet as distributed: 3 ObjectNet classes, 2 overlapping ImageNet (a 6-class
    stand-in for the 1000), PNGs with a 1-pixel red border."""
    from PIL import Image

    names = ["tench", "analog clock", "digital clock", "banana", "chair", "teapot"]  # by class index
    (root / "mappings").mkdir(parents=True)
    if with_mappings:
        # As distributed, the names file is in another order; pytorch_to_imagenet_2012_id.json gives each
        # class index its line.
        order = [3, 0, 5, 1, 4, 2]  # line k names class order[k]
        lines = [names[c] for c in order]
        (root / "mappings" / "imagenet_to_label_2012_v2").write_text("\n".join(lines) + "\n")
        index_to_line = {str(c): order.index(c) for c in range(6)}
        (root / "mappings" / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(index_to_line))
        (root / "mappings" / "folder_to_objectnet_label.json").write_text(
            json.dumps({"alarm_clock": "Alarm clock", "banana": "Banana", "sock": "Sock"})
        )
        (root / "mappings" / "objectnet_to_imagenet_1k.json").write_text(
            json.dumps({"Alarm clock": "analog clock; digital clock", "Banana": "banana"})
        )
    # interior grey level = the ImageNet class the fake model will see: clocks (1 or 2), banana (3 or 0)
    plan = {"alarm_clock": [1, 2, 3], "banana": [3, 3, 0, 5], "sock": [4, 4]}
    for folder, levels in plan.items():
        (root / "images" / folder).mkdir(parents=True)
        for i, level in enumerate(levels):
            a = np.full((12, 10, 3), level * 40, np.uint8)
            a[0, :], a[-1, :], a[:, 0], a[:, -1] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
            Image.fromarray(a).save(root / "images" / folder / f"{i}.png")
    return plan


def test_objectnet_overlap_restriction_and_border(tmp_path):
    from vitscale.evaluators import objectnet

    make_objectnet(tmp_path / "objectnet-1.0")
    assert objectnet.missing(tmp_path) == []
    pipe = pipeline.Pipeline(image_size=10, channels=3, eval_ops=("resize(10)", "value_range(0, 255)"))

    def logits(params, x):
        """The class is the image's mean level / 40 (a red border left on would shift it)."""
        level = tf.reduce_mean(tf.convert_to_tensor(np.asarray(x)), axis=(1, 2, 3)) / 40.0
        return 10.0 * tf.one_hot(tf.cast(tf.round(level), tf.int32), 6).numpy()

    mesh = sharding.make_mesh([1, 1], devices=jax.devices()[:1])
    out = objectnet.evaluator(tmp_path, pipe, 4, mesh).run(logits, None)
    # Counted: alarm_clock (3 images) and banana (4); sock does not overlap ImageNet. Predictions are
    # restricted to the mapped ImageNet classes 1, 2, 3: clock levels 1, 2 hit, 3 (banana) misses; banana
    # levels 3, 3 hit; levels 0 and 5 are not allowed, every allowed logit is 0, the first allowed (1, a
    # clock) is taken: two misses. 4 of 7.
    assert out == {"acc": pytest.approx(4 / 7), "images": 7, "classes": 2}


def test_objectnet_border_is_cropped(tmp_path):
    from vitscale.evaluators import objectnet

    make_objectnet(tmp_path / "objectnet-1.0")
    ex = next(iter(objectnet.examples(tmp_path)))
    image = ex["image"].numpy()
    assert image.shape == (10, 8, 3) and (image == image[0, 0]).all()  # no red pixel left


def test_objectnet_without_mappings(tmp_path):
    from vitscale.evaluators import objectnet

    make_objectnet(tmp_path / "objectnet-1.0", with_mappings=False)
    assert len(objectnet.missing(tmp_path)) == 4


def test_imagenet_v2_accuracy_hand_count(monkeypatch):
    """The v2 evaluator's count on hand-made examples standing in for the prepared variant: 3 of 5."""
    from vitscale.evaluators import imagenet_v2

    levels, labels = [1, 2, 3, 4, 0], [1, 2, 0, 4, 3]  # predicted class = level; hits at 0, 1, 3
    images = np.stack([np.full((6, 6, 3), 40 * v, np.uint8) for v in levels])
    asked = []

    def examples(variant, data_dir):
        asked.append(variant)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.asarray(labels, np.int64)})

    monkeypatch.setattr(imagenet_v2, "examples", examples)
    pipe = pipeline.Pipeline(image_size=6, channels=3, eval_ops=("resize(6)", "value_range(0, 255)"))

    def logits(params, x):
        level = tf.reduce_mean(tf.convert_to_tensor(np.asarray(x)), axis=(1, 2, 3)) / 40.0
        return 10.0 * tf.one_hot(tf.cast(tf.round(level), tf.int32), 5).numpy()

    mesh = sharding.make_mesh([1, 1], devices=jax.devices()[:1])
    out = imagenet_v2.evaluator(pipe, 2, mesh, variant="topimages").run(logits, None)
    assert out == {"acc": pytest.approx(3 / 5), "images": 5, "variant": "topimages"} and asked == ["topimages"]
    assert imagenet_v2.dataset() == "imagenet_v2/matched-frequency"
