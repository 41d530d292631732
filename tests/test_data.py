"""The input pipeline against independent references: a numpy decode of the IDX files, TFDS's
mock data for any other dataset name, and closed forms for preprocessing."""

import gzip
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import FASHION
from vitscale import data


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
    s = data.load_split("fashion_mnist", split)
    assert len(s) == n == len(labels)
    assert s.images.shape == (n, 28, 28, 1) and s.num_classes == 10
    # TFDS shuffles examples when writing; compare as multisets keyed by the pixels.
    key = lambda im, lb: [hash(a.tobytes()) ^ int(b) for a, b in zip(im, lb)]
    assert sorted(key(s.images[..., 0], s.labels)) == sorted(key(images, labels))
    assert data.num_examples("fashion_mnist", split) == n


def test_split_syntax_and_subset():
    full = data.load_split("fashion_mnist", "train")
    sub = data.load_split("fashion_mnist", "train[:1000]")
    assert len(sub) == 1000
    np.testing.assert_array_equal(sub.images, full.images[:1000])
    pct = data.load_split("fashion_mnist", "test[:10%]")
    assert len(pct) == 1000


def test_any_tfds_dataset_through_the_same_path(tmp_path):
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
        s = data.load_split("cifar10", "train", data_dir=str(tmp_path))
    assert s.images.shape == (24, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.num_classes == 10


def test_unknown_dataset_names_accepted_ones():
    with pytest.raises(ValueError, match="unknown dataset 'fashion_mnistt'.*fashion_mnist"):
        data.check_dataset_name("fashion_mnistt")


@pytest.mark.parametrize(
    "name,n_train,n_test,shape", [("mnist_5k", 4000, 1000, (28, 28, 1)), ("sklearn_digits", 1297, 500, (8, 8, 1))]
)
def test_offline_downstream_datasets(name, n_train, n_test, shape):
    tr, te = data.load_split(name, "train"), data.load_split(name, "test")
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
    s = data.load_split("sklearn_digits", "test")
    ref = {np.round(im * 255 / 16).astype(np.uint8).tobytes() for im in d.images}
    assert all(im[..., 0].tobytes() in ref for im in s.images)


def test_preprocess_value_range_resize_channels():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 17  # 0..255
    x = data.preprocess(img, 4, 1, (-1.0, 1.0)).numpy()
    np.testing.assert_allclose(x[..., 0], img[..., 0] / 127.5 - 1.0, atol=1e-6)
    x3 = data.preprocess(img, 4, 3, (0.0, 1.0)).numpy()
    assert x3.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(x3[..., 2], img[..., 0] / 255.0, atol=1e-6)
    const = np.full((2, 8, 8, 1), 51, np.uint8)
    up = data.preprocess(const, 28, 1, (0.0, 1.0)).numpy()
    assert up.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(up, 0.2, atol=1e-5)


def test_augment_crop_and_flip_are_shifts_and_mirrors():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (8, 12, 12, 1)).astype(np.float32)
    import tensorflow as tf

    offs = tf.constant(rng.integers(0, 5, (8, 2)), tf.int32)
    coin = tf.constant([True, False] * 4)
    out = data.augment(tf.constant(img), offs, coin, crop_padding=2, flip=True).numpy()
    padded = np.pad(img, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    for i in range(8):
        oy, ox = offs.numpy()[i]
        ref = padded[i, oy : oy + 12, ox : ox + 12]
        if coin.numpy()[i]:
            ref = ref[:, ::-1]
        np.testing.assert_array_equal(out[i], ref)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batches_are_a_function_of_seed_and_step():
    split = data.load_split("mnist_5k", "train")
    pipe = data.Pipeline(28, 1, crop_padding=2, flip=True)
    a = _take(data.train_batches(split, pipe, global_batch=100, seed=3), 6)
    b = _take(data.train_batches(split, pipe, global_batch=100, seed=3, start_step=4), 2)
    for x, y in zip(a[4:], b):  # resuming at step 4 gives exactly steps 4 and 5
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = _take(data.train_batches(split, pipe, global_batch=100, seed=4), 1)
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_each_epoch_is_a_permutation():
    split = data.load_split("sklearn_digits", "test")  # 500 images
    pipe = data.Pipeline(8, 1)
    batches = _take(data.train_batches(split, pipe, global_batch=50, seed=0), 20)
    for epoch in range(2):
        imgs = np.concatenate([b["image"] for b in batches[epoch * 10 : (epoch + 1) * 10]])
        keys = sorted(x.tobytes() for x in imgs)
        ref = sorted(x.tobytes() for x in data.preprocess(split.images, 8, 1).numpy())
        assert keys == ref
    assert not np.array_equal(batches[0]["label"], batches[10]["label"])


def test_hosts_take_their_slice_of_the_same_global_batch():
    split = data.load_split("mnist_5k", "test")
    pipe = data.Pipeline(28, 1, crop_padding=2, flip=True)
    full = _take(data.train_batches(split, pipe, global_batch=64, seed=1), 3)
    parts = [
        _take(data.train_batches(split, pipe, global_batch=64, seed=1, process_index=p, process_count=4), 3)
        for p in range(4)
    ]
    for s in range(3):
        np.testing.assert_array_equal(np.concatenate([parts[p][s]["image"] for p in range(4)]), full[s]["image"])


def test_eval_batches_cover_the_split_once_with_mask():
    split = data.load_split("sklearn_digits", "test")
    batches = list(data.eval_batches(split, data.Pipeline(8, 1), 64))
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert mask.sum() == 500 and len(mask) == 512
    np.testing.assert_array_equal(labels, split.labels)
