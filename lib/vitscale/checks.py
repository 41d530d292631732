"""The checks that read disk, datasets or devices: the building blocks of each program's `check(cfg)`.

Each adds `config.Problem`s to a list rather than raising, so one check reports every problem at
once; `raise_problems` ends it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from vitscale import config, sharding
from vitscale.config import Problem
from vitscale.data import datasets, sources
from vitscale.data import ops as data_ops


def raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise config.ConfigError(problems)


def split_size(problems: list[Problem], field: str, dataset: str, split: str, data_dir: str | None) -> int | None:
    """The number of examples of `dataset:split` from its metadata, or a problem saying why not."""
    try:
        datasets.check_dataset_name(dataset)
        builder = datasets.get_builder(dataset, data_dir)
    except (ValueError, FileNotFoundError) as e:
        problems.append(Problem(field, str(e)))
        return None
    except Exception as e:  # noqa: BLE001 - any failure to open a dataset is a problem with the parameters
        problems.append(
            Problem(field, f"{dataset!r} cannot be opened in data_dir {data_dir!r}: {type(e).__name__}: {e}")
        )
        return None
    if not builder.info.splits:
        problems.append(Problem(field, str(datasets.not_prepared(dataset, builder))))
        return None
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
        splits = list(builder.info.splits.keys())
        problems.append(Problem(field, f"split {split!r} of {dataset!r} is not valid ({e}); accepted: {splits}"))
        return None


def pp_shapes(
    problems: list[Problem],
    pp: dict[str, list[str] | None],
    dataset: str,
    data_dir: str | None,
    image_size: int,
    channels: int,
) -> None:
    """Each given pp list (field -> ops) makes images of [image_size, image_size, channels] from the
    dataset's images, and the dataset has at least two classes."""
    try:
        builder = datasets.get_builder(dataset, data_dir)
        image_key, label_key = builder.info.supervised_keys or ("image", "label")
        shape = tuple(builder.info.features[image_key].shape)
        num_classes = builder.info.features[label_key].num_classes
    except Exception:  # noqa: BLE001 - an unreadable dataset is reported by split_size
        return
    if num_classes is not None and num_classes < 2:
        problems.append(
            Problem(
                "dataset", f"{dataset!r} has {num_classes} class; a classifier needs at least two (accepted: 2 or more)"
            )
        )
    input_shape = (*shape[:2], shape[2] if len(shape) > 2 else 1) if len(shape) >= 2 else (None, None, None)
    want = (image_size, image_size, channels)
    for field, pp_ops in pp.items():
        if not pp_ops:
            continue
        got = data_ops.output_shape(pp_ops, input_shape)
        if got != want:
            shown = "x".join("?" if d is None else str(d) for d in got)
            problems.append(
                Problem(
                    field,
                    f"{pp_ops} makes {shown} images (height x width x channels) of {dataset!r}, the model takes "
                    f"{image_size}x{image_size}x{channels} (accepted: ops ending in that size, e.g. "
                    f"resize({image_size}) and channels({channels}))",
                )
            )


def input_path(problems: list[Problem], field: str, dataset: str, split: str, data_dir: str | None, input: str) -> None:
    """The split can be read the way `input` says: streamed splits need array_record files, and a
    split of images that vary in shape cannot be held in memory."""
    try:
        if sources.choose_input(dataset, split, data_dir, input) == "stream":
            sources.open_source(dataset, split, data_dir)
        else:
            builder = datasets.get_builder(dataset, data_dir)
            key = (builder.info.supervised_keys or ("image", "label"))[0]
            if any(d is None for d in builder.info.features[key].shape):
                problems.append(
                    Problem(
                        field,
                        f"{input!r}: the images of {dataset!r} vary in shape, so a split cannot be one array "
                        "(accepted: 'stream' or 'auto')",
                    )
                )
    except (ValueError, FileNotFoundError) as e:
        problems.append(Problem(field, f"{input!r}: {e}"))


@functools.lru_cache(maxsize=64)
def class_counts(name: str, split: str, data_dir: str | None, input: str) -> np.ndarray:
    """Images per class of a split, read once per process (a sweep checks many runs on the same pools)."""
    source = sources.load(name, split, data_dir, input)
    return np.bincount(source.labels, minlength=source.num_classes)


def fewshot_pools(
    problems: list[Problem],
    field: str,
    names: Sequence[str],
    shots: Sequence[int],
    data_dir: str | None,
    input: str = "auto",
) -> None:
    """Every few-shot dataset is readable and has at least max(shots) images in each class of its pool."""
    k = max(shots)
    for name in names:
        pool_split, test_split = datasets.downstream_splits(name)
        if split_size(problems, field, name, pool_split, data_dir) is None:
            continue
        if split_size(problems, field, name, test_split, data_dir) is None:
            continue
        counts = class_counts(name, pool_split, data_dir, input)
        short = {c: int(n) for c, n in enumerate(counts) if n < k}
        if short:
            problems.append(
                Problem(
                    field,
                    f"{name!r} has fewer than {k} images (the largest of fewshot_shots {list(shots)}) in these "
                    f"classes of its {pool_split!r} split: {short} (accepted: shot counts up to {int(counts.min())})",
                )
            )


def devices(
    problems: list[Problem], mesh: Sequence[int], batches: dict[str, int], grad_chains: int | str = "auto"
) -> None:
    """The mesh fits the devices and every global batch splits over the devices and processes."""
    n, hosts = jax.device_count(), jax.process_count()
    try:
        sharding.mesh_shape(mesh, n)
    except ValueError as e:
        problems.append(Problem("mesh", f"{e} (got {list(mesh)}; accepted: [-1, 1], or sizes whose product is {n})"))
    for field, batch in batches.items():
        if batch % n or batch % hosts:
            problems.append(
                Problem(
                    field,
                    f"{batch} does not split over {n} devices and {hosts} processes (accepted: a "
                    f"multiple of {np.lcm(n, hosts)})",
                )
            )
        elif grad_chains != "auto" and (batch // n) % grad_chains:
            problems.append(
                Problem(
                    "grad_chains",
                    f"{grad_chains} does not divide the batch per device ({batch} / {n} = "
                    f"{batch // n}); accepted: 'auto' or a divisor of {batch // n}",
                )
            )
