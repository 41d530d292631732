"""A classifier's predictions over a dataset read once, in order: the common part of the ImageNet-ReaL,
ImageNet-v2 and ObjectNet evaluators (images preprocessed as the pipeline's evaluation ops say)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf

from vitscale import sharding
from vitscale.data import pipeline


def example_batches(
    ds: tf.data.Dataset, pipe: pipeline.Pipeline, batch_size: int, channels: int | None = 3
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `ds` (dicts with an encoded or decoded "image" and integer fields) through the
    pipeline's evaluation ops; variable-length integer fields are padded with -1. Every batch has
    `batch_size` rows; `mask` marks the real ones (the last batch is padded)."""
    ops, shape = pipe.ops(train=False), pipe.output_shape()
    base = tf.constant([0, 0], tf.int64)  # random ops in pp_eval: fixed draws, as pipeline.eval_batches

    def one(ex):
        draws = tuple(d[0] for d in pipeline._draws(ops, base, 1))
        return {**ex, "image": pipeline._apply(ops, ex["image"], draws, shape, channels), "mask": True}

    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    pad = {k: tf.constant(-1, v.dtype) for k, v in ds.element_spec.items() if v.dtype.is_integer}
    pad.update({"image": tf.constant(0, tf.float32), "mask": False})
    ds = ds.padded_batch(batch_size, padding_values=pad).prefetch(2)
    for batch in ds.as_numpy_iterator():
        n = len(batch["mask"])
        if n < batch_size:  # the last batch: pad to a whole batch so it splits over the devices
            batch = {
                k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
            }
        yield batch


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
