"""The preprocessing ops against closed forms and independent references: the grammar the schemas
check (data.ops), each op's pixels, and the legacy preprocessing kept as a test oracle."""

import numpy as np
import pytest

from oracles import preprocess
from vitscale import config
from vitscale.data import ops, pipeline


def test_preprocess_value_range_resize_channels():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 17  # 0..255
    x = preprocess(img, 4, 1, (-1.0, 1.0)).numpy()
    np.testing.assert_allclose(x[..., 0], img[..., 0] / 127.5 - 1.0, atol=1e-6)
    x3 = preprocess(img, 4, 3, (0.0, 1.0)).numpy()
    assert x3.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(x3[..., 2], img[..., 0] / 255.0, atol=1e-6)
    const = np.full((2, 8, 8, 1), 51, np.uint8)
    up = preprocess(const, 28, 1, (0.0, 1.0)).numpy()
    assert up.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(up, 0.2, atol=1e-5)


def test_augment_crop_and_flip_are_shifts_and_mirrors():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (8, 12, 12, 1)).astype(np.float32)
    import tensorflow as tf

    offs = tf.constant(rng.integers(0, 5, (8, 2)), tf.int32)
    coin = tf.constant([True, False] * 4)
    out = ops.augment(tf.constant(img), offs, coin, crop_padding=2, flip=True).numpy()
    padded = np.pad(img, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    for i in range(8):
        oy, ox = offs.numpy()[i]
        ref = padded[i, oy : oy + 12, ox : ox + 12]
        if coin.numpy()[i]:
            ref = ref[:, ::-1]
        np.testing.assert_array_equal(out[i], ref)


@pytest.mark.parametrize(
    "texts,match",
    [
        (["decode", "blur(3)"], r"unknown preprocessing op 'blur\(3\)' \(accepted: decode.*inception_crop"),
        (["inception_crop"], r"takes 1-2 argument"),
        (["decode_jpeg_and_inception_crop(0)"], r"size must be a positive integer"),
        (["decode_jpeg_and_inception_crop(224, 0)"], r"area_min must be a percentage in \(0, 100\]"),
        (["resize(224, 224, 3)"], r"takes 1-2 argument"),
        (["central_crop(x)"], r"must be numbers"),
        (["value_range(1, -1)"], r"lo < hi"),
    ],
)
def test_bad_ops_are_parameter_errors(texts, match):
    for field in ("pp_train", "pp_eval"):
        with pytest.raises(config.ConfigError, match=match) as e:
            config.validate(config.PretrainConfig, {field: texts})
        assert [p.field for p in e.value.problems] == [field]
    with pytest.raises(config.ConfigError, match=match):
        config.validate(config.TransferConfig, {"pretrained": "random", "random_model": {}, "pp_finetune": texts})


def test_an_op_is_one_decorated_function_whose_signature_is_its_grammar(monkeypatch):
    """Registering an op is all it takes for the schemas to accept it and check its arguments."""
    monkeypatch.setattr(ops, "OPS", dict(ops.OPS))

    @ops.op(check=lambda size, sigma=1: None if sigma < size else "needs sigma < size")
    def blur(size: ops.Size, sigma: ops.Percent = 1):
        """blur(size, sigma%=1): a test op"""
        return None, lambda x, _: x

    assert ops.parse("blur(3)") == ("blur", (3,)) and ops.parse(" blur( 5, 2.5 ) ") == ("blur", (5, 2.5))
    config.validate(config.PretrainConfig, {"pp_train": ["decode", "blur(3, 2)"]})
    for text, match in [
        ("blur", r"takes 1-2 argument\(s\), got 0 \(blur\(size, sigma%=1\): a test op\)"),
        ("blur(0)", r"size must be a positive integer"),
        ("blur(3, 101)", r"sigma must be a percentage in \(0, 100\]"),
        ("blur(3, 4)", r"needs sigma < size"),
    ]:
        with pytest.raises(config.ConfigError, match=match):
            config.validate(config.PretrainConfig, {"pp_train": [text]})
    with pytest.raises(TypeError, match="annotate each op argument"):
        ops.op(lambda size: None)


def test_ops_closed_forms():
    import tensorflow as tf

    img = tf.constant(np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3))
    x = pipeline._apply(pipeline.Pipeline(4, 3, eval_ops=("central_crop(4)",)).ops(False), img, (0,), [4, 4, 3]).numpy()
    np.testing.assert_array_equal(x, img.numpy()[1:5, 3:7].astype(np.float32))
    small = ops.resize_small(3)[1](img, None)
    assert small.shape == (3, 5, 3)
    chain = pipeline.Pipeline(5, 3).ops(True)
    assert len(chain) == 4  # decode, resize, channels, value_range: no random op by default
    _, crop = ops.inception_crop(8)
    seed = tf.constant([1, 2], tf.int32)
    a, b = crop(tf.cast(img, tf.float32), seed), crop(tf.cast(img, tf.float32), seed)
    assert a.shape == (8, 8, 3) and np.array_equal(a.numpy(), b.numpy())


def _bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Float64 bilinear resampling with half-pixel centres (TF2's tf.image.resize), no antialiasing."""
    h, w = img.shape[:2]

    def axis(n_in):
        c = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), c - lo

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def test_inception_crop_and_flip_closed_forms():
    import tensorflow as tf

    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    _, crop = ops.inception_crop(16, 20)
    for s in range(5):
        seed = tf.constant([s, 7], tf.int32)
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            img.shape, tf.zeros([0, 0, 4]), seed=seed, area_range=(0.2, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
            min_object_covered=0.0, use_image_if_no_bounding_boxes=True,
        )  # fmt: skip
        (y, x, _), (h, w, _) = begin.numpy(), extent.numpy()
        assert 0.2 * 37 * 53 <= h * w * 1.02 and 3 / 4 <= w / h * 1.1 and w / h <= 4 / 3 * 1.1
        want = _bilinear(img[y : y + h, x : x + w], 16)
        np.testing.assert_allclose(crop(tf.constant(img), seed).numpy(), want, atol=1e-3)
    _, flip = ops.flip_lr()
    x = tf.constant(img.astype(np.float32))
    np.testing.assert_array_equal(flip(x, tf.constant(True)).numpy(), img[:, ::-1])
    np.testing.assert_array_equal(flip(x, tf.constant(False)).numpy(), img)


def test_fused_jpeg_crop_takes_the_same_window_and_png_the_two_ops():
    import tensorflow as tf

    from natural_images import photos

    pic = photos()[0][:300, :400]  # a real photograph
    _, fused = ops.decode_jpeg_and_inception_crop(64)
    _, crop = ops.inception_crop(64)
    jpeg, png = tf.io.encode_jpeg(pic, quality=90), tf.io.encode_png(pic)
    for s in range(4):
        seed = tf.constant([s, 3], tf.int32)
        want = crop(tf.io.decode_jpeg(jpeg, channels=3), seed).numpy()
        got = fused(jpeg, seed, 3).numpy()
        assert got.shape == (64, 64, 3)
        # Same window: only pixels near its edge may differ (chroma upsampled from the cropped data).
        assert np.mean(np.abs(got - want)) < 1.0 and np.mean(np.abs(got - want) > 8) < 0.02
        np.testing.assert_array_equal(
            fused(png, seed, 3).numpy(), crop(tf.io.decode_png(png, channels=3), seed).numpy()
        )
    pixels = tf.constant(pic[None, :100, :100])  # the in-memory path: pixels, no decoding
    np.testing.assert_array_equal(fused(pixels, seed[None]).numpy(), crop(pixels, seed[None]).numpy())
