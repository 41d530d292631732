"""ImageNet-ReaL: top-1 accuracy against the reassessed labels of the ImageNet validation images
(Beyer et al. 2020, "Are we done with ImageNet?", arXiv:2006.07159), TFDS `imagenet2012_real`.

As big_vision's classification evaluator and timm's `RealLabelsImagenet` count it: a prediction is
correct when it is in the image's set of real labels; images whose set is empty are left out (their
count is reported). The accuracy against the original label on the same images stands beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from vitscale.data import datasets, pipeline
from vitscale.evaluators import classify

DATASET = "imagenet2012_real"
SPLIT = "validation"
PREPARE = "tfds build imagenet2012_real --manual_dir=<folder holding ILSVRC2012_img_val.tar>"


def real_accuracy(
    predictions: Sequence[int], real_labels: Sequence[Sequence[int]], original_labels: Sequence[int]
) -> dict[str, float | int]:
    """{acc (ReaL), original_acc (same images), images (counted), excluded_empty (empty sets left out)}.
    `real_labels[i]` is the set of image i (-1 entries are padding)."""
    sets = [{int(c) for c in s if c >= 0} for s in real_labels]
    kept = [i for i, s in enumerate(sets) if s]
    if not kept:
        raise ValueError("every ReaL label set is empty: nothing to count")
    pred = np.asarray(predictions)
    correct = sum(int(pred[i]) in sets[i] for i in kept)
    original = int(np.sum(pred[kept] == np.asarray(original_labels)[kept]))
    return {
        "acc": correct / len(kept),
        "original_acc": original / len(kept),
        "images": len(kept),
        "excluded_empty": len(sets) - len(kept),
    }


def examples(data_dir: str | None = None, split: str = SPLIT):
    """The validation images, encoded, with their original label and ReaL set, in file order."""
    builder = tfds.builder(DATASET, data_dir=data_dir or datasets.default_data_dir())
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: {"image": ex["image"], "original_label": ex["original_label"], "real": ex["real_label"]})


def evaluate(logits, params, pipe: pipeline.Pipeline, mesh, *, data_dir=None, batch_size=512) -> dict[str, float | int]:
    """ReaL and original-label accuracy of a 1000-class ImageNet classifier (see real_accuracy)."""
    out = classify.predict(logits, params, classify.example_batches(examples(data_dir), pipe, batch_size), mesh)
    return real_accuracy(out["pred"], out["real"], out["original_label"])
