"""The classification evaluator (big_vision's `evaluators/classification.py` shape): built once from a
dataset of examples, a pipeline and a batch size; `run(predict_fn, params)` gives {name: value}.

A label is a set of classes (a multi-hot row, as big_vision and timm's `real_labels.py` score ImageNet-
ReaL): a prediction is correct when it is in the image's set. A plain integer label is the set of one
class. ImageNet-ReaL, ImageNet-v2 and ObjectNet are this evaluator over another dataset, label key and
(ObjectNet) set of classes a prediction may take.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow as tf

from vitscale import sharding
from vitscale.data import pipeline


def logits_fn(trainer) -> Callable:
    """(params, images) -> logits of the trainer's model, jitted."""
    return jax.jit(lambda params, images: trainer.model.apply({"params": params}, images, train=False)[0])


def predict(
    logits: Callable,
    params,
    batches: Iterator[dict[str, np.ndarray]],
    mesh,
    classes: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """{"pred": top-1 class per example (among `classes` when given: the others are never predicted),
    and every other field of the batches}, over the real examples only, in order."""
    allowed = None if classes is None else np.asarray(sorted(classes), np.int64)
    out: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        x = sharding.put_batch({"image": batch["image"]}, mesh)["image"]
        z = np.asarray(jax.device_get(logits(params, x)), np.float32)
        pred = np.argmax(z, -1) if allowed is None else allowed[np.argmax(z[:, allowed], -1)]
        keep = batch["mask"].astype(bool)
        out.setdefault("pred", []).append(pred[keep])
        for k, v in batch.items():
            if k not in ("image", "mask"):
                out.setdefault(k, []).append(v[keep])
    if not out:
        raise ValueError("the dataset to predict on is empty")
    width = {k: max(a.shape[1] for a in v) for k, v in out.items() if v[0].ndim == 2}
    for k, w in width.items():  # variable-length fields: the same width in every batch
        out[k] = [np.pad(a, ((0, 0), (0, w - a.shape[1])), constant_values=-1) for a in out[k]]
    return {k: np.concatenate(v) for k, v in out.items()}


def label_sets(labels: np.ndarray) -> np.ndarray:
    """[n, k] class ids padded with -1 (a plain [n] label: k = 1) from a label field."""
    labels = np.asarray(labels)
    return labels[:, None] if labels.ndim == 1 else labels


def accuracy(
    predictions: Sequence[int], labels: np.ndarray, exclude_empty: bool = False, also: dict | None = None
) -> dict[str, float | int]:
    """{acc, <name> for each single-label field in `also`, images[, excluded_empty]}: a prediction is
    correct when it is in the image's label set. `exclude_empty`: images with an empty set are left out
    (and counted), as ReaL's protocol says; otherwise they count as wrong."""
    pred = np.asarray(predictions)
    sets = label_sets(labels)
    kept = (sets >= 0).any(1) if exclude_empty else np.ones(len(pred), bool)
    if not kept.any():
        raise ValueError("every label set is empty: nothing to count")
    hits = (sets == pred[:, None]).any(1)
    out: dict[str, float | int] = {"acc": int(hits[kept].sum()) / int(kept.sum())}
    for name, single in (also or {}).items():
        out[name] = int(np.sum(pred[kept] == np.asarray(single)[kept])) / int(kept.sum())
    out["images"] = int(kept.sum())
    if exclude_empty:
        out["excluded_empty"] = int(len(pred) - kept.sum())
    return out


@dataclasses.dataclass(frozen=True)
class Classification:
    """Top-1 accuracy of a classifier over a dataset of examples, built once; `run` per model.

    `examples()`: a tf.data.Dataset of {"image", label fields}; `label_key`: the field holding the
    label (an integer or a -1-padded set of classes); `classes`: the classes a prediction may take
    (None: all); `also`: {metric: single-label field} scored on the same images; `info`: constant
    fields of the result (the dataset variant, the class count)."""

    examples: Callable[[], tf.data.Dataset]
    pipe: pipeline.Pipeline
    batch_size: int
    mesh: Any
    label_key: str = "label"
    classes: Sequence[int] | None = None
    exclude_empty: bool = False
    also: dict[str, str] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def run(self, predict_fn: Callable, params) -> dict[str, Any]:
        """{acc, images, ...} of `predict_fn(params, images) -> logits` over the whole dataset."""
        batches = pipeline.eval_batches(self.examples(), self.pipe, sharding.eval_batch_size(self.batch_size))
        out = predict(predict_fn, params, batches, self.mesh, classes=self.classes)
        also = {name: out[key] for name, key in self.also.items()}
        return {**accuracy(out["pred"], out[self.label_key], self.exclude_empty, also), **self.info}
