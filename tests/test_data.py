"""Datasets, sources and batches against independent references: a numpy decode of the IDX files,
TFDS's mock data for any other dataset name, the pipeline before op lists, counts and closed forms.
The preprocessing ops themselves: test_ops.py."""

import gzip
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import FASHION
from oracles import preprocess
from vitscale.data import datasets, ops, pipeline, sources


def read_idx(path):
    """Independent IDX decoder (the format's spec: magic, dims as big-endian int32, then bytes)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 0x08
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.mark.parametrize("split,prefix,n", [("train", "train", 60_000), ("test", "t10k", 10_000)])
def test_fashion_mnist_matches_idx_files(split, prefix, n):
    images = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
    s = sources.load_split("fashion_mnist", split)
    assert len(s) == n == len(labels)
    assert s.images.shape == (n, 28, 28, 1) and s.num_classes == 10
    # TFDS shuffles examples when writing; compare as multisets keyed by the pixels.
    key = lambda im, lb: [hash(a.tobytes()) ^ int(b) for a, b in zip(im, lb)]
    assert sorted(key(s.images[..., 0], s.labels)) == sorted(key(images, labels))
    assert sources.num_examples("fashion_mnist", split) == n


def test_split_syntax_and_subset():
    full = sources.load_split("fashion_mnist", "train")
    sub = sources.load_split("fashion_mnist", "train[:1000]")
    assert len(sub) == 1000
    np.testing.assert_array_equal(sub.images, full.images[:1000])
    pct = sources.load_split("fashion_mnist", "test[:10%]")
    assert len(pct) == 1000


def test_any_tfds_dataset_through_the_same_path(tmp_path):
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
        s = sources.load_split("cifar10", "train", data_dir=str(tmp_path))
    assert s.images.shape == (24, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.num_classes == 10


def test_unknown_dataset_names_accepted_ones():
    with pytest.raises(ValueError, match="unknown dataset 'fashion_mnistt'.*fashion_mnist"):
        datasets.check_dataset_name("fashion_mnistt")


@pytest.mark.parametrize(
    "name,n_train,n_test,shape", [("mnist_5k", 4000, 1000, (28, 28, 1)), ("sklearn_digits", 1297, 500, (8, 8, 1))]
)
def test_offline_downstream_datasets(name, n_train, n_test, shape):
    tr, te = sources.load_split(name, "train"), sources.load_split(name, "test")
    assert (len(tr), len(te)) == (n_train, n_test)
    assert tr.images.shape[1:] == shape
    # Stratified: every class in both splits, test exactly balanced.
    assert np.all(np.bincount(te.labels, minlength=10) == n_test // 10)
    # Disjoint: no test image also in train.
    train_keys = {a.tobytes() + bytes([b]) for a, b in zip(tr.images, tr.labels)}
    assert sum(a.tobytes() + bytes([b]) in train_keys for a, b in zip(te.images, te.labels)) <= 2


def test_digits_pixels_match_sklearn():
    from sklearn.datasets import load_digits

    d = load_digits()
    s = sources.load_split("sklearn_digits", "test")
    ref = {np.round(im * 255 / 16).astype(np.uint8).tobytes() for im in d.images}
    assert all(im[..., 0].tobytes() in ref for im in s.images)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batches_are_a_function_of_seed_and_step():
    split = sources.load_split("mnist_5k", "train")
    pipe = pipeline.Pipeline(28, 1, crop_padding=2, flip=True)
    a = _take(pipeline.train_batches(split, pipe, global_batch=100, seed=3), 6)
    b = _take(pipeline.train_batches(split, pipe, global_batch=100, seed=3, start_step=4), 2)
    for x, y in zip(a[4:], b):  # resuming at step 4 gives exactly steps 4 and 5
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = _take(pipeline.train_batches(split, pipe, global_batch=100, seed=4), 1)
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_each_epoch_is_a_permutation():
    split = sources.load_split("sklearn_digits", "test")  # 500 images
    pipe = pipeline.Pipeline(8, 1)
    batches = _take(pipeline.train_batches(split, pipe, global_batch=50, seed=0), 20)
    for epoch in range(2):
        imgs = np.concatenate([b["image"] for b in batches[epoch * 10 : (epoch + 1) * 10]])
        keys = sorted(x.tobytes() for x in imgs)
        ref = sorted(x.tobytes() for x in preprocess(split.images, 8, 1).numpy())
        assert keys == ref
    assert not np.array_equal(batches[0]["label"], batches[10]["label"])


def test_hosts_take_their_slice_of_the_same_global_batch():
    split = sources.load_split("mnist_5k", "test")
    pipe = pipeline.Pipeline(28, 1, crop_padding=2, flip=True)
    full = _take(pipeline.train_batches(split, pipe, global_batch=64, seed=1), 3)
    parts = [
        _take(pipeline.train_batches(split, pipe, global_batch=64, seed=1, host=pipeline.Host(p, 4)), 3)
        for p in range(4)
    ]
    for s in range(3):
        np.testing.assert_array_equal(np.concatenate([parts[p][s]["image"] for p in range(4)]), full[s]["image"])


def test_eval_batches_cover_the_split_once_with_mask():
    split = sources.load_split("sklearn_digits", "test")
    batches = list(pipeline.eval_batches(split, pipeline.Pipeline(8, 1), 64))
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert mask.sum() == 500 and len(mask) == 512
    np.testing.assert_array_equal(labels, split.labels)


# ----------------------------------------------------------------------------- the pipeline before op lists, streaming
def legacy_train_batches(split, pipe, *, global_batch, seed, steps, process_index=0, process_count=1):
    """Before op lists (commit cb459e1): pipeline.train_batches as it was, kept as the reference."""
    import tensorflow as tf

    n, local = len(split), global_batch // process_count
    images, labels = tf.constant(split.images), tf.constant(split.labels)
    out = []
    for step in range(steps):
        step = tf.constant(step, tf.int64)
        g = step * global_batch + tf.range(global_batch, dtype=tf.int64)
        epoch, pos = g // n, g % n
        seeds = tf.stack([tf.fill(tf.shape(g), tf.cast(seed, tf.int64)), epoch, tf.zeros_like(g)], axis=1)
        idx = tf.raw_ops.RandomIndexShuffle(
            index=pos, seed=seeds, max_index=tf.fill(tf.shape(g), tf.cast(n - 1, tf.int64)), rounds=4
        )
        idx = idx[process_index * local : (process_index + 1) * local]
        x = preprocess(tf.gather(images, idx), pipe.image_size, pipe.channels, pipe.value_range)
        if pipe.crop_padding or pipe.flip:
            offs, coin = ops.augment_draws(tf.stack([tf.cast(seed, tf.int64), step]), global_batch, pipe.crop_padding)
            sl = slice(process_index * local, (process_index + 1) * local)
            x = ops.augment(x, offs[sl], coin[sl], pipe.crop_padding, pipe.flip)
        out.append({"image": x.numpy(), "label": tf.gather(labels, idx).numpy()})
    return out


@pytest.mark.parametrize(
    "dataset,size,channels,pad,flip",
    [("fashion_mnist", 28, 1, 2, True), ("sklearn_digits", 28, 3, 0, True), ("mnist_5k", 32, 1, 3, False)],
)
def test_default_ops_give_todays_batches(dataset, size, channels, pad, flip):
    split = sources.load_split(dataset, "test")
    pipe = pipeline.Pipeline(size, channels, crop_padding=pad, flip=flip)
    ref = legacy_train_batches(split, pipe, global_batch=64, seed=5, steps=3)
    # The defaults, and the same pipeline written out as ops (what pp_train would say).
    texts = tuple(ops.default_ops(size, channels, crop_padding=pad, flip=flip))
    assert texts[:2] == ("decode", f"resize({size})")
    for p in (pipe, pipeline.Pipeline(size, channels, train_ops=texts)):
        got = _take(pipeline.train_batches(split, p, global_batch=64, seed=5), 3)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])


@pytest.fixture(scope="module")
def photos_dataset(tmp_path_factory):
    """A natural-image folder (varying sizes, JPEG and PNG, grey and colour, one corrupt file)."""
    from natural_images import write_folder

    root = write_folder(tmp_path_factory.mktemp("photos") / "images", per_class=10, corrupt=True)
    return f"folder:{root}", str(tmp_path_factory.mktemp("tfds"))


def test_folder_dataset_is_prepared_with_a_stratified_split_and_skips_corrupt_files(photos_dataset):
    name, data_dir = photos_dataset
    with pytest.warns(UserWarning, match=r"1 unreadable image file\(s\) skipped:\n  .*broken\.jpg"):
        builder = datasets.get_builder(name, data_dir)
    assert builder.info.splits["train"].num_examples == 11 * 9 and builder.info.splits["test"].num_examples == 11
    assert list(datasets.skipped_files(name, data_dir)) == [name.removeprefix("folder:") + "/digit_0/broken.jpg"]
    assert sources.choose_input(name, "train", data_dir) == "stream"
    train, test = sources.load(name, "train", data_dir), sources.load(name, "test", data_dir)
    assert isinstance(train, sources.Source) and train.num_classes == 11
    assert np.all(np.bincount(test.labels, minlength=11) == 1) and np.all(np.bincount(train.labels) == 9)
    with pytest.raises(ValueError, match="images of different shapes"):
        sources.load(name, "test", data_dir, mode="memory")


INCEPTION = ("decode", "inception_crop(32)", "flip_lr", "value_range(-1, 1)")


def test_streamed_batches_are_a_function_of_seed_and_step_and_hosts_take_slices(photos_dataset):
    name, data_dir = photos_dataset
    src = sources.load(name, "train", data_dir, mode="stream")
    pipe = pipeline.Pipeline(32, 3, train_ops=INCEPTION)
    a = _take(pipeline.train_batches(src, pipe, global_batch=24, seed=3), 6)
    assert a[0]["image"].shape == (24, 32, 32, 3) and a[0]["image"].dtype == np.float32
    assert -1 <= a[0]["image"].min() < 0 < a[0]["image"].max() <= 1
    b = _take(pipeline.train_batches(src, pipe, global_batch=24, seed=3, start_step=4), 2)
    for x, y in zip(a[4:], b):  # resuming at step 4 gives exactly steps 4 and 5
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    parts = [
        _take(pipeline.train_batches(src, pipe, global_batch=24, seed=3, host=pipeline.Host(p, 2)), 3) for p in range(2)
    ]
    for s in range(3):  # two hosts read disjoint halves whose union is the one-host global batch
        for k in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([parts[0][s][k], parts[1][s][k]]), a[s][k])
    # The first 4 steps (96 of 99 examples) are one epoch: no example twice.
    labels = np.concatenate([x["label"] for x in a[:4]])
    assert np.all(np.bincount(labels, minlength=11) <= 9)


def test_streamed_eval_covers_the_split_once(photos_dataset):
    name, data_dir = photos_dataset
    test = sources.load(name, "train", data_dir)
    pipe = pipeline.Pipeline(32, 3, eval_ops=("decode", "resize_small(40)", "central_crop(32)", "value_range(-1, 1)"))
    batches = list(pipeline.eval_batches(test, pipe, 16))
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 99 and len(mask) == 112
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], test.labels)


def test_stream_and_memory_paths_give_the_same_batches(tmp_path):
    """A folder of fixed-size lossless PNGs reads the same both ways: same indices, same draws."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(120):
        (tmp_path / "img" / str(d.target[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(d.images[i] * 255 / 16).astype(np.uint8)).save(
            tmp_path / "img" / f"{d.target[i]}/{i}.png"
        )
    name, data_dir = f"folder:{tmp_path / 'img'}", str(tmp_path / "tfds")
    mem, stream = sources.load(name, "train", data_dir, "memory"), sources.load(name, "train", data_dir, "stream")
    assert isinstance(mem, sources.Split) and mem.images.shape[1:] == (8, 8, 3)
    pipe = pipeline.Pipeline(16, 1, crop_padding=2, flip=True)
    for a, b in zip(
        _take(pipeline.train_batches(mem, pipe, global_batch=32, seed=1), 5),
        _take(pipeline.train_batches(stream, pipe, global_batch=32, seed=1), 5),
    ):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_allclose(a["image"], b["image"], atol=1e-5)


def test_split_folders_give_the_splits(tmp_path):
    from natural_images import write_folder

    root = write_folder(tmp_path / "imgs", per_class=5, classes=3, photo_class=False, split_folders=True)
    b = datasets.get_builder(f"folder:{root}", str(tmp_path / "tfds"))
    assert (b.info.splits["train"].num_examples, b.info.splits["test"].num_examples) == (12, 3)
    assert b.info.features["label"].names == ["digit_0", "digit_1", "digit_2"]


# ----------------------------------------------------------------------------- preparing at once
PREPARE = """
import sys, time
from pathlib import Path
from vitscale.data import datasets
go = Path(sys.argv[2])
Path(sys.argv[3]).touch()  # ready: TensorFlow imported
while not go.exists():
    time.sleep(0.01)
builder = datasets.get_builder("sklearn_digits", sys.argv[1])
print(builder.info.splits["train"].num_examples, builder.info.splits["test"].num_examples)
"""


@pytest.mark.long  # four fresh processes, each importing TensorFlow: make test-long
def test_four_processes_preparing_one_dataset_at_once_all_open_it(tmp_path):
    data_dir, go = tmp_path / "tfds", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE, str(data_dir), str(go), str(r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    t0 = time.time()
    while not all(r.exists() for r in ready) and time.time() - t0 < 300:
        time.sleep(0.05)
    go.touch()  # all four ask for the dataset at the same moment
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == "1297 500", out  # sklearn's 1797 digits, 500 held out for test
    assert sum("Downloading and preparing" in out for out, _ in results) == 1  # one prepared, three waited
    assert len([p for p in data_dir.rglob("*") if "incomplete" in p.name]) == 0
