"""ImageNet-ReaL: top-1 accuracy against the reassessed labels of the ImageNet validation images
(Beyer et al. 2020, "Are we done with ImageNet?", arXiv:2006.07159), TFDS `imagenet2012_real`.

As big_vision's classification evaluator and timm's `RealLabelsImagenet` count it: a prediction is
correct when it is in the image's set of real labels; images whose set is empty are left out (their
count is reported). The accuracy against the original label on the same images stands beside it.
It is the classification evaluator with the ReaL set as the label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from vitscale.data import datasets, pipeline
from vitscale.evaluators import classification

DATASET = "imagenet2012_real"
SPLIT = "validation"
PREPARE = "tfds build imagenet2012_real --manual_dir=<folder holding ILSVRC2012_img_val.tar>"


def real_accuracy(
    predictions: Sequence[int], real_labels: Sequence[Sequence[int]], original_labels: Sequence[int]
) -> dict[str, float | int]:
    """{acc (ReaL), original_acc (same images), images (counted), excluded_empty (empty sets left out)}.
    `real_labels[i]` is the set of image i (-1 entries are padding)."""
    width = max((len(s) for s in real_labels), default=0) or 1
    sets = [[int(c) for c in s] + [-1] * (width - len(s)) for s in real_labels]
    also = {"original_acc": original_labels}
    return classification.accuracy(predictions, np.asarray(sets, np.int64), exclude_empty=True, also=also)


def examples(data_dir: str | None = None, split: str = SPLIT):
    """The validation images, encoded, with their original label and ReaL set, in file order."""
    builder = tfds.builder(DATASET, data_dir=data_dir or datasets.default_data_dir())
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: {"image": ex["image"], "original_label": ex["original_label"], "real": ex["real_label"]})


def evaluator(
    pipe: pipeline.Pipeline, batch_size: int, mesh, data_dir: str | None = None
) -> classification.Classification:
    """ReaL and original-label accuracy of a 1000-class ImageNet classifier (see real_accuracy)."""
    return classification.Classification(
        lambda: examples(data_dir), pipe, batch_size, mesh,
        label_key="real", exclude_empty=True, also={"original_acc": "original_label"},
    )  # fmt: skip
