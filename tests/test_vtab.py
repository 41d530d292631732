"""VTAB-1k task table: split sizes by TFDS's own slicing over the TFDS splits' published sizes, label
derivations against closed forms written from task_adaptation's data/*.py, and the loading path on
offline stand-ins."""

import math

import numpy as np
import pytest
import tensorflow as tf

from vitscale.data import sources, vtab
from vitscale.evaluators import vtab as vtab_results

# TFDS split sizes of each builder (the TFDS catalog pages of the pinned versions).
COUNTS = {
    "caltech101": {"train": 3060, "test": 6084},
    "cifar100": {"train": 50000, "test": 10000},
    "dtd": {"train": 1880, "validation": 1880, "test": 1880},
    "oxford_flowers102": {"train": 1020, "validation": 1020, "test": 6149},
    "oxford_iiit_pet": {"train": 3680, "test": 3669},
    "svhn": {"train": 73257, "test": 26032, "extra": 531131},
    "sun397": {"train": 76128, "validation": 10875, "test": 21750},
    "patch_camelyon": {"train": 262144, "validation": 32768, "test": 32768},
    "eurosat": {"train": 27000},
    "resisc45": {"train": 31500},
    "diabetic_retinopathy": {"train": 35126, "validation": 10906, "test": 42670},
    "clevr_count": {"train": 70000, "validation": 15000, "test": 15000},
    "clevr_distance": {"train": 70000, "validation": 15000, "test": 15000},
    "dmlab": {"train": 65550, "validation": 22628, "test": 22735},
    "dsprites_location": {"train": 737280},
    "dsprites_orientation": {"train": 737280},
    "kitti_distance": {"train": 6347, "validation": 423, "test": 711},
    "smallnorb_azimuth": {"train": 24300, "test": 24300},
    "smallnorb_elevation": {"train": 24300, "test": 24300},
}


def expected_test_size(name: str, c: dict[str, int]) -> int:
    """task_adaptation's test part, written out per builder."""
    n = c["train"]
    if name in ("eurosat", "resisc45"):  # 60 / 20 / 20 of train
        return n - 60 * n // 100 - 20 * n // 100
    if name.startswith("dsprites"):  # 80 / 10 / 10 of train
        return n - 80 * n // 100 - 10 * n // 100
    if name.startswith("smallnorb"):  # the second half of test
        return c["test"] - 50 * c["test"] // 100
    if name.startswith("clevr"):  # TFDS validation is VTAB's test
        return c["validation"]
    return c["test"]


def test_the_table_has_the_19_tasks_in_their_groups():
    groups = {g: sorted(t.name for t in vtab.TASKS.values() if t.group == g) for g in vtab.GROUPS}
    assert [len(groups[g]) for g in vtab.GROUPS] == [7, 4, 8]
    assert set(vtab.TASKS) == set(COUNTS)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_split_sizes(name):
    task, c = vtab.TASKS[name], COUNTS[name]
    sizes = {s: vtab.split_size(task, s, c) for s in vtab.SPLITS}
    assert sizes == {"train800": 800, "val200": 200, "train800val200": 1000, "test": expected_test_size(name, c)}
    # val200 lies outside train800 and the test part (task_adaptation's val part starts after its train part).
    val = vtab.split_expr(task, "val200", c)
    if task.val_from == "train":
        start = int(val.split("[")[1].split(":")[0])
        assert start == task.train_percent * c["train"] // 100 >= 800
    test = vtab.split_expr(task, "test", c)
    assert test.split("[")[0] != val.split("[")[0] or test != val


def label_of(name: str, ex: dict) -> int:
    return int(vtab.LABELS[vtab.TASKS[name].label](ex).numpy())


def test_clevr_labels_closed_forms():
    rng = np.random.default_rng(0)
    thresholds = [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]
    for _ in range(200):
        k = int(rng.integers(3, 11))
        depth = rng.uniform(6.5, 12.0, size=k).astype(np.float32)
        coords = np.stack([rng.uniform(0, 480, k), rng.uniform(0, 320, k), depth], 1).astype(np.float32)
        ex = {"objects": {"size": tf.zeros([k], tf.int64), "pixel_coords": tf.constant(coords)}}
        assert label_of("clevr_count", ex) == k - 3
        d = float(depth.min())
        assert label_of("clevr_distance", ex) == max(i for i, t in enumerate(thresholds) if t < d)
    assert vtab.TASKS["clevr_count"].num_classes == 8 and vtab.TASKS["clevr_distance"].num_classes == 6


def test_kitti_distance_closed_form():
    rng = np.random.default_rng(1)
    thresholds = [-100.0, 8.0, 20.0, 999.0]
    seen = set()
    for _ in range(300):
        k = int(rng.integers(1, 8))
        kinds = rng.integers(0, 8, size=k)  # 0 Car, 1 Van, 2 Truck are vehicles
        z = rng.uniform(2, 60, size=k).astype(np.float32)
        loc = np.stack([rng.normal(size=k), rng.normal(size=k), z], 1).astype(np.float32)
        ex = {"objects": {"type": tf.constant(kinds), "location": tf.constant(loc)}}
        vehicles = [float(zz) for zz, t in zip(z, kinds) if t < 3]
        d = min(vehicles) if vehicles else 1000.0
        want = max(i for i, t in enumerate(thresholds) if t < d)
        assert label_of("kitti_distance", ex) == want
        seen.add(want)
    assert seen == {0, 1, 2, 3}  # every class occurs: the closed form was exercised fully


def test_dsprites_and_smallnorb_labels_closed_forms():
    for v in range(32):
        assert label_of("dsprites_location", {"label_x_position": tf.constant(v, tf.int64)}) == v // 2
    for v in range(40):
        assert label_of("dsprites_orientation", {"label_orientation": tf.constant(v, tf.int64)}) == math.floor(v / 2.5)
    for v in range(18):
        assert label_of("smallnorb_azimuth", {"label_azimuth": tf.constant(v, tf.int64)}) == v
    for v in range(9):
        assert label_of("smallnorb_elevation", {"label_elevation": tf.constant(v, tf.int64)}) == v


def test_summary_means_by_group():
    acc = {name: (i + 1) / 40 for i, name in enumerate(sorted(vtab.TASKS))}
    out = vtab_results.summarize(acc)
    by_group = {g: [a for n, a in acc.items() if vtab.TASKS[n].group == g] for g in vtab.GROUPS}
    assert out["mean"] == pytest.approx(sum(acc.values()) / 19)
    for g in vtab.GROUPS:
        assert out[g] == pytest.approx(sum(by_group[g]) / len(by_group[g]))
    assert vtab_results.summarize({"dtd": 0.5})["structured"] is None
    mixed = vtab_results.summarize({"dtd": 0.5, "standin:mnist_5k": 0.9})  # a stand-in is not VTAB
    assert mixed["mean"] == 0.5 and mixed["natural"] == 0.5 and mixed["standin"] == 0.9
    assert vtab_results.summarize({"standin:mnist_5k": 0.9})["mean"] is None


def test_unknown_task_and_unprepared_builder(tmp_path):
    with pytest.raises(KeyError, match="accepted: caltech101"):
        vtab.get("cifar10")
    with pytest.raises(vtab.NotPrepared, match=r"tfds build diabetic_retinopathy_detection/btgraham-300 --manual_dir"):
        vtab.builder(vtab.TASKS["diabetic_retinopathy"], str(tmp_path))
    # A pin this TFDS no longer has in code (pets 3.*.*; it ships 4.0.0) is looked for as prepared files.
    with pytest.raises(vtab.NotPrepared, match=r"oxford_iiit_pet:3\.\*\.\* \(task_adaptation's pin\)"):
        vtab.builder(vtab.TASKS["oxford_iiit_pet"], str(tmp_path))


def test_standin_splits_load_with_their_labels(tmp_path):
    """The loading path on sklearn_digits (a stand-in): sizes, 3 channels, and labels equal to the
    dataset's own in the same slices."""
    task = vtab.get("standin:sklearn_digits", str(tmp_path))
    full = sources.load_split("sklearn_digits", "train", str(tmp_path))
    test = sources.load_split("sklearn_digits", "test", str(tmp_path))
    s = {name: vtab.load(task, name, str(tmp_path), size=8) for name in vtab.SPLITS}
    assert [len(s[n]) for n in vtab.SPLITS] == [800, 200, 1000, len(test)]
    assert s["train800"].images.shape[1:] == (8, 8, 3) and s["train800"].num_classes == 10
    np.testing.assert_array_equal(s["train800"].labels, full.labels[:800])
    np.testing.assert_array_equal(s["val200"].labels, full.labels[800:1000])
    np.testing.assert_array_equal(s["train800val200"].labels, full.labels[:1000])
    np.testing.assert_array_equal(s["test"].labels, test.labels)
    np.testing.assert_array_equal(s["train800"].images[..., 1], full.images[:800, ..., 0])  # grey tiled
