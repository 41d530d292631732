"""Two ways to read a split, behind one interface (`len`, `name`, `num_classes`, `labels`):

- in memory (`load_split` -> `Split`): the split decoded into one uint8 array, gathered by index.
  Needs images of one shape and the pixels in RAM (Fashion-MNIST: 47 MB).
- streamed (`open_source` -> `Source`): the split's array_record files read by index, each example
  parsed, decoded and preprocessed on its own in tf.data's parallel map, batched, prefetched. Memory
  holds a few batches, whatever the split's size; images may differ in size.

`load(..., mode="auto")` (the `input` parameter) picks: streamed when the files are array_record and the images vary in
shape or exceed MEMORY_LIMIT_BYTES decoded, else in memory (TFRecord files only allow the latter).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vitscale.data import datasets, ops, tfsetup

tf = tfsetup.tensorflow()


# ----------------------------------------------------------------------------- in-memory splits
@dataclasses.dataclass(frozen=True)
class Split:
    """A split held in memory: uint8 images [N, H, W, C], int32 labels [N]."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


@functools.lru_cache(maxsize=16)
def load_split(dataset: str, split: str, data_dir: str | None = None) -> Split:
    """Load a TFDS split (any split syntax, e.g. "train[:10000]") into memory."""
    builder = datasets.get_builder(dataset, data_dir)
    if builder.info.splits and builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        return _decode_all(open_source(dataset, split, data_dir))
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:
        if "could not find data" in str(e).lower():
            raise datasets.not_prepared(dataset, builder) from None
        raise
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"split {split!r} of {dataset!r} is not valid: {e}; splits: {list(builder.info.splits.keys())}"
        ) from e
    # Batches of 8192 rather than batch_size=-1, which needs a known cardinality.
    chunks = list(tfds.as_numpy(ds.batch(8192)))
    data = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}
    if not data:
        raise ValueError(f"split {split!r} of {dataset!r} is empty")
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    images = np.asarray(data[image_key])
    if images.ndim == 3:
        images = images[..., None]
    return Split(
        name=f"{dataset}:{split}",
        images=images,
        labels=np.asarray(data[label_key]).astype(np.int32),
        num_classes=builder.info.features[label_key].num_classes,
    )


def _decode_all(source: Source) -> Split:
    """An array_record split decoded into memory (its images must share one shape)."""
    ds = tf.data.Dataset.range(len(source)).batch(1024).map(source.fetch).unbatch()
    decode = lambda s: (lambda e, y: (ops.decode()[1](e, None, source.channels), y))(*source.parse(s))
    images, labels = [], []
    for img, y in ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).as_numpy_iterator():
        if images and img.shape != images[0].shape:
            raise ValueError(
                f"{source.name}: images of different shapes ({images[0].shape}, {img.shape}) cannot be held "
                "in one array; use input: stream"
            )
        images.append(img)
        labels.append(y)
    if not images:
        raise ValueError(f"{source.name} is empty")
    return Split(source.name, np.stack(images), np.asarray(labels, np.int32), source.num_classes)


def num_examples(dataset: str, split: str, data_dir: str | None = None) -> int:
    """Size of a split from the dataset's metadata (no decoding)."""
    return datasets.get_builder(dataset, data_dir).info.splits[split].num_examples


# ----------------------------------------------------------------------------- streamed splits
class _Subset:
    """Random access to some records of another random-access source (a view; nothing is read)."""

    def __init__(self, records, index: np.ndarray):
        self._records, self._index = records, np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def __getitems__(self, keys):
        return self._records.__getitems__(self._index[np.asarray(keys, np.int64)].tolist())


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """A split read by random access from its prepared array_record files, example by example:
    `records[i]` is the serialized example, parsed and decoded only when a batch needs it."""

    name: str
    records: Any  # len() and __getitems__(indices) -> serialized examples
    features: Any  # the dataset's tfds FeaturesDict (to parse an example)
    image_key: str
    label_key: str
    num_classes: int
    channels: int | None  # of the stored images, when the dataset fixes it

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, index: np.ndarray, tag: str) -> Source:
        return dataclasses.replace(self, name=f"{self.name}({tag})", records=_Subset(self.records, index))

    def parse(self, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(encoded image bytes, int32 label) of one serialized example."""
        ex = self.features.deserialize_example(serialized, decoders={self.image_key: tfds.decode.SkipDecoding()})
        return ex[self.image_key], tf.cast(ex[self.label_key], tf.int32)

    def fetch(self, idx: tf.Tensor) -> tf.Tensor:
        """The serialized examples at `idx` (a graph op reading the files through Python)."""
        out = tf.py_function(
            lambda i: np.asarray(self.records.__getitems__(i.numpy().tolist()), dtype=object), [idx], tf.string
        )
        return tf.ensure_shape(out, idx.shape)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Every label of the split, in order (one pass parsing the examples, no image decoding)."""
        ds = tf.data.Dataset.range(len(self)).batch(4096).map(self.fetch)
        ds = ds.unbatch().map(lambda s: self.parse(s)[1], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return np.fromiter(ds.batch(8192).unbatch().as_numpy_iterator(), np.int32, len(self))


def open_source(dataset: str, split: str, data_dir: str | None = None) -> Source:
    """A split for streaming. Needs the dataset prepared as array_record (TFDS's random-access format:
    `tfds build --file_format=array_record`, or our own builders for folders)."""
    builder = datasets.get_builder(dataset, data_dir)
    if not builder.info.splits:
        raise datasets.not_prepared(dataset, builder)
    if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"{dataset!r} is prepared as {builder.info.file_format.value} in {builder.data_dir}; streaming reads "
            f"by index and needs array_record: prepare it with `tfds build {dataset} --file_format=array_record` "
            "(or use input: memory if it fits)"
        )
    try:
        records = builder.as_data_source(split=split).data_source
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"split {split!r} of {dataset!r} is not valid: {e}; splits: {list(builder.info.splits.keys())}"
        ) from e
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    return Source(
        name=f"{dataset}:{split}",
        records=records,
        features=builder.info.features,
        image_key=image_key,
        label_key=label_key,
        num_classes=builder.info.features[label_key].num_classes,
        channels=builder.info.features[image_key].shape[-1],
    )


MEMORY_LIMIT_BYTES = int(os.environ.get("VITSCALE_MEMORY_LIMIT_BYTES", 2 * 2**30))  # auto: above this, stream


def choose_input(dataset: str, split: str, data_dir: str | None = None, mode: str = "auto") -> str:
    """Where a split is read from, "memory" or "stream": `mode` unless "auto", which streams a split prepared as
    array_record whose images vary in shape or whose decoded pixels exceed MEMORY_LIMIT_BYTES."""
    if mode != "auto":
        return mode
    builder = datasets.get_builder(dataset, data_dir)
    if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        return "memory"  # TFRecord files are read in sequence: only the in-memory path can shuffle them
    image_key = (builder.info.supervised_keys or ("image", "label"))[0]
    shape = builder.info.features[image_key].shape
    if any(d is None for d in shape):
        return "stream"
    n = builder.info.splits[split].num_examples
    return "stream" if n * int(np.prod(shape)) > MEMORY_LIMIT_BYTES else "memory"


def load(dataset: str, split: str, data_dir: str | None = None, mode: str = "auto") -> Split | Source:
    """A split as the input parameter says: in memory (`load_split`) or streamed (`open_source`)."""
    if choose_input(dataset, split, data_dir, mode) == "stream":
        return open_source(dataset, split, data_dir)
    return load_split(dataset, split, data_dir)
