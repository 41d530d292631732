"""Dataset names: which are accepted, their TFDS builders (prepared on first use), what is not prepared,
and the split tables of downstream (few-shot) and fine-tuning datasets.

Every dataset is a TFDS builder's prepared files in `data_dir`: the offline builders (builders.py),
any other TFDS name whose prepared files are in `data_dir`, and `folder:/path`, a folder of class
sub-folders of images, prepared once into `data_dir`. Nothing is downloaded at run time.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import tensorflow_datasets as tfds

from vitscale.data import builders

FOLDER = "folder:"  # dataset name prefix: folder:/path/to/images


def default_data_dir() -> str:
    """TFDS's data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets), shared with any TFDS user."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


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
    if name in builders.OFFLINE_BUILDERS:
        return
    if (folder := folder_path(name)) is not None:
        if not folder.is_dir():
            raise ValueError(f"dataset {name!r}: {folder} is not a folder (accepted: folder:/path/to/class/folders)")
        return
    if name.split("/")[0].split(":")[0] not in tfds.list_builders(with_community_datasets=False):
        raise ValueError(
            f"unknown dataset {name!r}; offline datasets: {sorted(builders.OFFLINE_BUILDERS)}, "
            "or any TFDS name (tfds.list_builders()) whose files are in data_dir"
        )


@functools.lru_cache(maxsize=64)
def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder for `name`, preparing an offline dataset into `data_dir` on first use."""
    check_dataset_name(name)
    data_dir = data_dir or default_data_dir()
    if (folder := folder_path(name)) is not None:
        make = functools.partial(builders.ImageFolder, folder=folder, data_dir=data_dir)
        return prepared(make, f"preparing {name} into {{}} (once)")
    if name in builders.OFFLINE_BUILDERS:
        builder = prepared(functools.partial(builders.OFFLINE_BUILDERS[name], data_dir=data_dir))
        # From here on the stock TFDS path reads the prepared files like any dataset's.
        return tfds.builder(name, data_dir=data_dir) if name in tfds.list_builders() else builder
    return tfds.builder(name, data_dir=data_dir)


def prepared(make: Callable[[], tfds.core.DatasetBuilder], note: str | None = None) -> tfds.core.DatasetBuilder:
    """`make()`'s builder, prepared. Several processes may ask at once (two shards of a sweep on a
    fresh data_dir): one prepares under a file lock beside the dataset's folder, the others wait for it
    and then open what it prepared (TFDS alone lets the second rename fail on the first's files)."""
    builder = make()
    if builder.is_prepared():
        return builder
    lock = Path(f"{builder.data_dir}.prepare.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        builder = make()  # another process may have prepared it while this one waited
        if not builder.is_prepared():
            if note:
                print(note.format(builder.data_dir))
            builder.download_and_prepare()
    return builder


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
