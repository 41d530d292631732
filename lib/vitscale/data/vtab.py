"""VTAB-1k as google-research/task_adaptation defines it: 19 tasks, each a TFDS builder at a pinned
version, a label derivation and four splits (`train800`, `val200`, `train800val200`, `test`).

The table `TASKS` is data: one `Task` per task, its fields read from task_adaptation's data/*.py
(builder and version pin, where its validation part comes from, how its labels are derived). The
1k splits are the first 800 images of the task's train part, the first 200 of its val part, and
both; `test` is the task's test part. Percent boundaries are computed as task_adaptation does
(`percent * count // 100` of the TFDS split). Nothing is downloaded: a task whose builder is not
prepared in data_dir is a parameter error naming its `tfds build` command (`PREPARE`).

Stand-ins (`standin:<dataset>`, any dataset vitscale reads: fashion_mnist, mnist_5k, sklearn_digits,
folder:/path) take the same path for offline runs: train800 = train[:800], val200 = train[800:1000],
test = the dataset's test split. They are not VTAB and are labelled so in every report.
evaluators/vtab.py summarises results (mean, group means).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitscale.data import datasets, sources

GROUPS = ("natural", "specialized", "structured")
SPLITS = ("train800", "val200", "train800val200", "test")
SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}
STANDIN = "standin:"


@dataclasses.dataclass(frozen=True)
class Task:
    """One VTAB-1k task. `val_from`: the TFDS split the val part comes from; when it is "train", the
    val part starts at `train_percent`% of it. `test`: the TFDS split expression of the test part, with
    `{end}` = the end of train+val (`train_percent`% + `val_percent`% of train, each rounded down)."""

    name: str
    group: str
    builder: str  # TFDS name[/config]:version, pinned as task_adaptation pins it
    num_classes: int
    label: str = "label"  # a key of LABELS
    val_from: str = "validation"
    train_percent: int | None = None
    val_percent: int | None = None
    test: str = "test"
    image_key: str = "image"
    prepare: str = ""  # extra `tfds build` arguments (manual downloads)

    @property
    def dataset(self) -> str:
        """The TFDS name without the version (what `tfds build` takes)."""
        return self.builder.split(":")[0]

    @property
    def standin(self) -> bool:
        return self.name.startswith(STANDIN)


# ----------------------------------------------------------------------------- label derivations
def _plain(key: str):
    return lambda ex: tf.cast(ex[key], tf.int32)


def _clevr_count(ex):
    """task_adaptation clevr count_all: number of objects - 3 (3..10 objects -> 8 classes)."""
    return tf.size(ex["objects"]["size"], out_type=tf.int32) - 3


def _bin(value, thresholds):
    """Index of the last threshold below `value` (task_adaptation's `reduce_max(where(thrs - v < 0))`)."""
    return tf.cast(tf.reduce_max(tf.where(np.asarray(thresholds, np.float32) - value < 0)), tf.int32)


CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)  # task_adaptation clevr.py
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)  # task_adaptation kitti.py, closest vehicle


def _clevr_distance(ex):
    """clevr closest_object_distance: the nearest object's depth (pixel_coords[:, 2]) binned into 6."""
    return _bin(tf.reduce_min(tf.cast(ex["objects"]["pixel_coords"][:, 2], tf.float32)), CLEVR_DISTANCE_THRESHOLDS)


def _kitti_distance(ex):
    """kitti closest_vehicle_distance: depth (location z) of the nearest Car/Van/Truck (type < 3),
    1000 when there is none, binned into 4 (the last: no vehicle)."""
    z = tf.cast(ex["objects"]["location"][:, 2], tf.float32)
    vehicle_z = tf.boolean_mask(z, ex["objects"]["type"] < 3)
    return _bin(tf.reduce_min(tf.concat([vehicle_z, [1000.0]], 0)), KITTI_DISTANCE_THRESHOLDS)


def _dsprites(key: str, original: int, classes: int):
    """dsprites with nearby values grouped: floor(value / (original / classes)), as task_adaptation."""
    factor = float(original) / classes
    return lambda ex: tf.cast(tf.math.floordiv(tf.cast(ex[key], tf.float32), factor), tf.int32)


LABELS = {
    "label": _plain("label"),
    "clevr_count": _clevr_count,
    "clevr_distance": _clevr_distance,
    "kitti_distance": _kitti_distance,
    "dsprites_location": _dsprites("label_x_position", 32, 16),
    "dsprites_orientation": _dsprites("label_orientation", 40, 16),
    "smallnorb_azimuth": _plain("label_azimuth"),
    "smallnorb_elevation": _plain("label_elevation"),
}

# ----------------------------------------------------------------------------- the 19 tasks
_KAGGLE = "--manual_dir=<folder with the Kaggle diabetic-retinopathy-detection files>"
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        # natural
        Task("caltech101", "natural", "caltech101:3.*.*", 102, val_from="train", train_percent=90),
        Task("cifar100", "natural", "cifar100:3.*.*", 100, val_from="train", train_percent=90),
        Task("dtd", "natural", "dtd:3.*.*", 47),
        Task("oxford_flowers102", "natural", "oxford_flowers102:2.*.*", 102),
        Task("oxford_iiit_pet", "natural", "oxford_iiit_pet:3.*.*", 37, val_from="train", train_percent=80),
        Task("svhn", "natural", "svhn_cropped:3.*.*", 10, val_from="train", train_percent=90),
        Task("sun397", "natural", "sun397/tfds:4.*.*", 397),
        # specialized
        Task("patch_camelyon", "specialized", "patch_camelyon:2.*.*", 2),
        Task(
            "eurosat",
            "specialized",
            "eurosat/rgb:2.*.*",
            10,
            val_from="train",
            train_percent=60,
            val_percent=20,
            test="train[{end}:]",
        ),  # fmt: skip
        Task(
            "resisc45",
            "specialized",
            "resisc45:3.*.*",
            45,
            val_from="train",
            train_percent=60,
            val_percent=20,
            test="train[{end}:]",
            prepare="--manual_dir=<folder with NWPU-RESISC45.rar>",
        ),  # fmt: skip
        Task(
            "diabetic_retinopathy",
            "specialized",
            "diabetic_retinopathy_detection/btgraham-300:3.*.*",
            5,
            prepare=_KAGGLE,
        ),  # fmt: skip
        # structured
        Task("clevr_count", "structured", "clevr:3.*.*", 8, "clevr_count", "train", 90, test="validation"),
        Task("clevr_distance", "structured", "clevr:3.*.*", 6, "clevr_distance", "train", 90, test="validation"),
        Task("dmlab", "structured", "dmlab:2.0.1", 6),
        Task(
            "dsprites_location",
            "structured",
            "dsprites:2.*.*",
            16,
            "dsprites_location",
            "train",
            80,
            10,
            test="train[{end}:]",
        ),  # fmt: skip
        Task(
            "dsprites_orientation",
            "structured",
            "dsprites:2.*.*",
            16,
            "dsprites_orientation",
            "train",
            80,
            10,
            test="train[{end}:]",
        ),  # fmt: skip
        Task("kitti_distance", "structured", "kitti:3.1.0", 4, "kitti_distance"),
        Task("smallnorb_azimuth", "structured", "smallnorb:2.*.*", 18, "smallnorb_azimuth", "test", test="test[50%:]"),
        Task(
            "smallnorb_elevation", "structured", "smallnorb:2.*.*", 9, "smallnorb_elevation", "test", test="test[50%:]"
        ),  # fmt: skip
    )
}


def standin(dataset: str, num_classes: int) -> Task:
    """A stand-in task over a dataset vitscale reads offline (not VTAB: labelled `standin:` everywhere)."""
    return Task(f"{STANDIN}{dataset}", "standin", dataset, num_classes, val_from="train", test="test")


def get(name: str, data_dir: str | None = None) -> Task:
    """The task `name` names: one of TASKS, or `standin:<dataset>`. Raises KeyError naming the accepted."""
    if name in TASKS:
        return TASKS[name]
    if name.startswith(STANDIN):
        dataset = name.removeprefix(STANDIN)
        builder = datasets.get_builder(dataset, data_dir)
        return standin(dataset, builder.info.features["label"].num_classes)
    raise KeyError(f"unknown VTAB task {name!r}; accepted: {', '.join(TASKS)}, or standin:<dataset>")


class NotPrepared(FileNotFoundError):
    """A task's builder has no prepared files in data_dir."""


def prepare_command(task: Task) -> str:
    """The command that prepares a task's builder (run where it can download; copy into data_dir)."""
    return " ".join(x for x in ("tfds build", task.dataset, task.prepare, "--data_dir=<data_dir>") if x)


def _not_prepared(task: Task, data_dir: str) -> NotPrepared:
    return NotPrepared(
        f"{task.name}: {task.builder} (task_adaptation's pin) is not prepared in {data_dir}; prepare it with "
        f"`{prepare_command(task)}` (a TFDS release that has that version) and copy it into data_dir"
    )


# ----------------------------------------------------------------------------- splits
def split_expr(task: Task, split: str, counts: dict[str, int]) -> str:
    """The TFDS split expression of one of SPLITS, from the TFDS splits' sizes `counts`."""
    if task.standin:
        return {"train800": "train[:800]", "val200": "train[800:1000]", "train800val200": "train[:1000]"}.get(
            split, "test"
        )
    n = counts.get("train", 0)
    val_start = task.train_percent * n // 100 if task.val_from == "train" else 0
    end = (task.train_percent or 0) * n // 100 + (task.val_percent or 0) * n // 100
    train800 = "train[:800]"
    val200 = f"{task.val_from}[{val_start}:{val_start + 200}]"
    exprs = {"train800": train800, "val200": val200, "train800val200": f"{train800}+{val200}"}
    if split in exprs:
        return exprs[split]
    if split == "test":
        return task.test.format(end=end)
    raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")


def builder(task: Task, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The task's builder at its pinned version, reading prepared files only. When the installed TFDS
    no longer has the pinned version in code, the prepared files of that version are read directly."""
    if task.standin:
        return datasets.get_builder(task.builder, data_dir)
    data_dir = data_dir or datasets.default_data_dir()
    try:
        b = tfds.builder(task.builder, data_dir=data_dir)
    except AssertionError:  # the pinned version is not in this TFDS's code: read its files
        name, _, version = task.builder.partition(":")
        major = version.split(".")[0]
        found = sorted(p for p in Path(data_dir, name).glob(f"{major}.*.*") if (p / "dataset_info.json").is_file())
        if not found:
            raise _not_prepared(task, data_dir) from None
        b = tfds.builder_from_directory(str(found[-1]))
    if not b.info.splits:
        raise _not_prepared(task, data_dir)
    return b


def counts(b: tfds.core.DatasetBuilder) -> dict[str, int]:
    return {name: info.num_examples for name, info in b.info.splits.items()}


def split_size(task: Task, split: str, counts: dict[str, int]) -> int:
    """Examples in a split, by TFDS's own slicing arithmetic over the TFDS splits' sizes."""
    instructions = tfds.core.ReadInstruction.from_spec(split_expr(task, split, counts))
    infos = {k: tfds.core.SplitInfo(name=k, shard_lengths=[v], num_bytes=0) for k, v in counts.items()}
    absolute = instructions.to_absolute(infos)
    return sum((counts[a.splitname] if a.to is None else a.to) - (a.from_ or 0) for a in absolute)


def _image(task: Task, ex, size: int | None, fixed_shape) -> tf.Tensor:
    """uint8 [H, W, 3]: decoded, 0/1 dSprites scaled to 0/255 and grey tiled to 3 channels (as
    task_adaptation), resized (bilinear) to size x size unless it is of one shape no larger."""
    x = ex[task.image_key]
    if x.dtype == tf.string:
        x = tf.io.decode_image(x, channels=0, expand_animations=False)
    if task.label.startswith("dsprites"):
        x = x * 255
    if x.shape.rank == 2:
        x = x[..., None]
    x = tf.cond(tf.shape(x)[-1] == 1, lambda: tf.tile(x, [1, 1, 3]), lambda: x[..., :3])
    keep = (
        fixed_shape is not None
        and None not in fixed_shape[:2]
        and (size is None or fixed_shape[0] * fixed_shape[1] <= size * size)
    )
    if size is not None and not keep:
        x = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(x, (size, size), antialias=True)), 0, 255), tf.uint8)
    return tf.ensure_shape(x, [None, None, 3])


def examples(b: tfds.core.DatasetBuilder, expr: str, image_key: str) -> tf.data.Dataset:
    """The examples of a split expression in order, images left encoded: TFRecord files through
    as_dataset, array_record files (vitscale's own folders, `--file_format=array_record`) read by index."""
    skip = {image_key: tfds.decode.SkipDecoding()}
    if b.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        return b.as_dataset(split=expr, shuffle_files=False, decoders=skip)
    records = b.as_data_source(split=expr).data_source
    fetch = lambda idx: tf.ensure_shape(  # noqa: E731 - the serialized examples at idx, read through Python
        tf.py_function(lambda i: np.asarray(records.__getitems__(i.numpy().tolist()), dtype=object), [idx], tf.string),
        idx.shape,
    )
    ds = tf.data.Dataset.range(len(records)).batch(1024).map(fetch).unbatch()
    return ds.map(lambda s: b.info.features.deserialize_example(s, decoders=skip))


def load(task: Task, split: str, data_dir: str | None = None, size: int | None = None) -> sources.Split:
    """One split of a task in memory, labels derived: images resized to `size` where they vary in shape
    or are larger (held at most N x size x size x 3 bytes), else as stored."""
    b = builder(task, data_dir)
    expr = split_expr(task, split, counts(b))
    ds = examples(b, expr, task.image_key)
    fixed = b.info.features[task.image_key].shape
    label = LABELS[task.label] if not task.standin else _plain((b.info.supervised_keys or ("", "label"))[1])
    ds = ds.map(lambda ex: (_image(task, ex, size, fixed), label(ex)), num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = [], []
    for x, y in ds.as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError(f"{task.name}: split {split} ({expr}) is empty")
    if len({im.shape for im in images}) > 1:  # one fixed shape or resized: only a mixed stand-in gets here
        images = [tf.image.resize(im, images[0].shape[:2]).numpy().round().astype(np.uint8) for im in images]
    return sources.Split(f"{task.name}:{split}", np.stack(images), np.asarray(labels, np.int32), task.num_classes)
