"""Batches: training batches are a pure function of (seed, step), evaluation batches cover a split once.

Training example g = step * global_batch + j is `index_shuffle(g mod N, seed=(seed, g div N))` of
the split, and each random preprocessing op draws from stateless RNGs seeded by (seed, step) for the
whole global batch. Each host of a multi-host job takes its own slice of it (and reads only those
records). The same on both kinds of split (sources.py): in memory and streamed.

Resume mechanism: random access, not a checkpointed iterator. Since batch = f(seed, step), a
resumed run rebuilds the pipeline at the checkpoint's step (`start_step`) and sees exactly the
batches it would have seen, with nothing but the step to save (loop.py records it as
`meta["data_position"]`). Chosen because it needs no iterator state in checkpoints, is the same for
any number of hosts (a host's slice never depends on another's progress), lets cooldown branches and
fine-tuning restart anywhere, and keeps one mechanism for both paths. The price is random reads,
which is what array_record (TFDS's `as_data_source`) is for; sequential-only TFRecord datasets use the
in-memory path (or are prepared again with `--file_format=array_record`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from vitscale.data import ops, sources, tfsetup

tf = tfsetup.tensorflow()


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How images become model inputs [image_size, image_size, channels] float32: op lists for training
    and evaluation (`train_ops`, `eval_ops`, data.ops), or today's fields when those are None."""

    image_size: int
    channels: int
    value_range: tuple[float, float] = (-1.0, 1.0)
    crop_padding: int = 0
    flip: bool = False
    train_ops: tuple[str, ...] | None = None
    eval_ops: tuple[str, ...] | None = None

    def ops(self, train: bool) -> list[tuple[Callable | None, Callable]]:
        given = self.train_ops if train else self.eval_ops
        if given is None:
            given = ops.default_ops(
                self.image_size,
                self.channels,
                self.value_range,
                *((self.crop_padding, self.flip) if train else (0, False)),
            )
        return [ops.build(text) for text in given]

    def output_shape(self) -> list[int]:
        return [self.image_size, self.image_size, self.channels]


def _draws(chain, base: tf.Tensor, n: int) -> tuple:
    return tuple(tf.zeros([n], tf.int32) if draw is None else draw(base, n) for draw, _ in chain)


def _apply(chain, x: tf.Tensor, draws: tuple, shape: list[int], channels: int | None = None) -> tf.Tensor:
    """The ops in order; an encoded image is decoded first (to the dataset's `channels`) if no op does."""
    for (_, apply), d in zip(chain, draws):
        if getattr(apply, "decodes", False):
            x = apply(x, d, channels)
            continue
        if x.dtype == tf.string:
            x = ops.decode()[1](x, None, channels)
        x = apply(x, d)
    x = tf.cast(x, tf.float32)
    try:
        return tf.ensure_shape(x, [*x.shape[: x.shape.rank - 3], *shape])
    except ValueError as e:
        raise ValueError(f"the preprocessing ops give images of shape {x.shape[-3:]}, the model takes {shape}") from e


def _step_indices(step, seed: int, n: int, global_batch: int) -> tf.Tensor:
    """Indices into the split of the global batch of `step`: g = step * B + j, then
    index_shuffle(g mod n, seed=(seed, g div n)): every epoch a fresh permutation."""
    g = step * global_batch + tf.range(global_batch, dtype=tf.int64)
    epoch, pos = g // n, g % n
    seeds = tf.stack([tf.fill(tf.shape(g), tf.cast(seed, tf.int64)), epoch, tf.zeros_like(g)], axis=1)
    # The raw op: tf.random.experimental.index_shuffle mis-pads a batched [n, 2] seed.
    return tf.raw_ops.RandomIndexShuffle(
        index=pos, seed=seeds, max_index=tf.fill(tf.shape(g), tf.cast(n - 1, tf.int64)), rounds=4
    )


class Host(NamedTuple):
    """This process's place in a multi-host job (jax.process_index(), jax.process_count()): which
    slice of each global batch it reads. One process: Host(0, 1)."""

    index: int = 0
    count: int = 1


ONE_PROCESS = Host(0, 1)


def train_batches(
    split: sources.Split | sources.Source,
    pipe: Pipeline,
    *,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    host: Host = ONE_PROCESS,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches for steps start_step, start_step+1, ... (`host`'s slice), from a
    split in memory or streamed from its files (a `sources.Source`): the same function of (seed, step)."""
    if global_batch % host.count:
        raise ValueError(f"batch_size {global_batch} is not divisible by the process count {host.count}")
    n, local = len(split), global_batch // host.count
    sl = slice(host.index * local, (host.index + 1) * local)
    chain, shape = pipe.ops(train=True), pipe.output_shape()

    def indices_and_draws(step):
        idx = _step_indices(step, seed, n, global_batch)[sl]
        base = tf.stack([tf.cast(seed, tf.int64), step])
        return idx, tuple(d[sl] for d in _draws(chain, base, global_batch))

    steps = tf.data.Dataset.range(start_step, 2**62)
    if isinstance(split, sources.Source):
        return _stream(split, steps.map(indices_and_draws), chain, shape, local)
    images, labels = tf.constant(split.images), tf.constant(split.labels)

    def batch_for_step(step):
        idx, draws = indices_and_draws(step)
        return {"image": _apply(chain, tf.gather(images, idx), draws, shape), "label": tf.gather(labels, idx)}

    ds = steps.map(batch_for_step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(2).as_numpy_iterator()


def eval_batches(
    data: sources.Split | sources.Source | tf.data.Dataset, pipe: Pipeline, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """The whole of `data` in order, through the pipeline's evaluation ops; the last batch is padded and
    `mask` marks real examples. `data`: a split in memory or streamed, or a tf.data.Dataset of examples
    (dicts with an encoded or decoded "image" and integer fields, such as ImageNet-ReaL's label sets)."""
    chain, shape = pipe.ops(train=False), pipe.output_shape()
    if isinstance(data, tf.data.Dataset):
        return _example_batches(data, chain, shape, batch_size, pipe.channels)
    n = len(data)
    if isinstance(data, sources.Source):
        num = -(-n // batch_size)

        def indices_and_draws(b):
            g = b * batch_size + tf.range(batch_size, dtype=tf.int64)
            base = tf.stack([tf.constant(0, tf.int64), b])  # random ops in pp_eval: fixed draws
            return tf.minimum(g, n - 1), _draws(chain, base, batch_size), g < n

        return _stream(data, tf.data.Dataset.range(num).map(indices_and_draws), chain, shape, batch_size)
    pad = (-n) % batch_size
    images = np.concatenate([data.images, np.zeros((pad, *data.images.shape[1:]), np.uint8)])
    labels = np.concatenate([data.labels, np.zeros((pad,), np.int32)])
    mask = np.concatenate([np.ones((n,), bool), np.zeros((pad,), bool)])
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "mask": mask})
    ds = ds.batch(batch_size).enumerate()

    def prep(b, batch):
        base = tf.stack([tf.constant(0, tf.int64), b])
        return {**batch, "image": _apply(chain, batch["image"], _draws(chain, base, batch_size), shape)}

    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(2).as_numpy_iterator()


def _example_batches(
    ds: tf.data.Dataset, chain, shape: list[int], batch_size: int, channels: int
) -> Iterator[dict[str, np.ndarray]]:
    """eval_batches of a dataset of examples: each preprocessed alone (random ops: the fixed draws of
    base [0, 0]); variable-length integer fields padded with -1; the last batch padded to a whole one."""
    base = tf.constant([0, 0], tf.int64)

    def one(ex):
        draws = tuple(d[0] for d in _draws(chain, base, 1))
        return {**ex, "image": _apply(chain, ex["image"], draws, shape, channels), "mask": True}

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


def _stream(
    source: sources.Source, index_ds: tf.data.Dataset, chain, shape, size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Batches from (indices, draws[, mask]) elements: fetch the records of a batch (a few in flight),
    then parse, decode and preprocess each example in parallel, in order, and batch them again."""

    def fetch(idx, draws, *mask):
        return (source.fetch(idx), draws, *mask)

    def one(serialized, draws, *mask):
        encoded, label = source.parse(serialized)
        out = {"image": _apply(chain, encoded, draws, shape, source.channels), "label": label}
        return {**out, "mask": mask[0]} if mask else out

    ds = index_ds.map(fetch, num_parallel_calls=2, deterministic=True).unbatch()
    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(size, drop_remainder=True).prefetch(2).as_numpy_iterator()
