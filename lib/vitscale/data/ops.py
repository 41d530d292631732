"""Preprocessing ops (big_vision style): `name` or `name(arg, ...)`, numbers only, in one registry.

An op is one function decorated with `@op`: its name is the op's name, its signature the grammar
(argument count, each argument's rule from its annotation), the first line of its docstring what
`config` shows, its body the implementation. `parse` reads an op's text with the grammar alone, so
`config` checks `pp_*` lists without importing TensorFlow (imported on first use by an op's body).
Adding an op touches this file and its test.

An op returns (draw, apply). `draw(base, n)` gives n per-example random draws from the stateless seed
`base` = (seed, step) (None for deterministic ops); `apply(x, d)` maps an image [H, W, C] or a batch
[B, H, W, C] with its draw(s). Draws are made for the whole global batch and sliced per host, so a
host's examples do not depend on the host count; reflect_crop and flip_lr draw exactly as
`augment_draws` does, so today's defaults give today's batches.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated

from vitscale.data import tfsetup


class _LazyTensorFlow:
    """`tf.x` imports (and sets up) TensorFlow on first use."""

    def __getattr__(self, name: str):
        return getattr(tfsetup.tensorflow(), name)


tf = _LazyTensorFlow()


# ----------------------------------------------------------------------------- the grammar
@dataclasses.dataclass(frozen=True)
class Rule:
    """What one argument must be (an op's annotation), e.g. a positive integer."""

    says: str
    holds: Callable[[float], bool]


# The argument types ops are annotated with: numbers that carry their rule.
Size = Annotated[int, Rule("a positive integer", lambda a: isinstance(a, int) and a > 0)]
Pad = Annotated[int, Rule("a non-negative integer", lambda a: isinstance(a, int) and a >= 0)]
Percent = Annotated[float, Rule("a percentage in (0, 100]", lambda a: 0 < a <= 100)]
Number = Annotated[float, Rule("a number", lambda a: True)]


def _rule(hint) -> Rule:
    """The Rule in an argument's annotation (`Size`, or `Size | None` for an optional argument)."""
    hint = next((h for h in typing.get_args(hint) if h is not type(None)), hint) if _is_union(hint) else hint
    rules = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Rule)]
    if len(rules) != 1:
        raise TypeError(f"annotate each op argument with one of Size, Pad, Percent, Number (got {hint!r})")
    return rules[0]


def _is_union(hint) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


@dataclasses.dataclass(frozen=True)
class Op:
    """One registered op: its implementation, its grammar (from the signature) and its documentation."""

    make: Callable  # (*args) -> (draw, apply)
    doc: str  # first docstring line: the grammar and what the op does
    rules: tuple[tuple[str, Rule], ...]  # (argument, rule), in order
    required: int
    check: Callable[..., str | None] | None  # a rule between arguments: what is wrong, or None
    shape: Callable[..., tuple] | None = None  # ((h, w, c), *args) -> the output's (h, w, c); None: kept


OPS: dict[str, Op] = {}


def op(
    fn: Callable | None = None,
    *,
    check: Callable[..., str | None] | None = None,
    shape: Callable[..., tuple] | None = None,
):
    """Register `fn` as the op of its name (`@op`, or `@op(check=...)` for a rule between arguments,
    `@op(shape=...)` for an op that changes the image's height, width or channels)."""

    def register(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn, include_extras=True)
        rules = tuple((p.name, _rule(hints.get(p.name))) for p in params)
        required = sum(p.default is inspect.Parameter.empty for p in params)
        doc = inspect.getdoc(fn).splitlines()[0]
        OPS[fn.__name__] = Op(make=fn, doc=doc, rules=rules, required=required, check=check, shape=shape)
        return fn

    return register(fn) if fn is not None else register


_TEXT = re.compile(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*")


def parse(text: str) -> tuple[str, tuple[float, ...]]:
    """`"inception_crop(224)"` -> ("inception_crop", (224,)); ValueError naming the accepted ops otherwise."""
    m = _TEXT.fullmatch(text) if isinstance(text, str) else None
    if m is None or m.group(1) not in OPS:
        accepted = "accepted: " + "; ".join(o.doc for o in OPS.values())
        raise ValueError(f"unknown preprocessing op {text!r} ({accepted})")
    name, raw = m.group(1), m.group(2)
    spec = OPS[name]
    try:
        args = tuple(float(a) for a in raw.split(",")) if raw and raw.strip() else ()
    except ValueError:
        raise ValueError(f"op {text!r}: arguments must be numbers ({spec.doc})") from None
    lo, hi = spec.required, len(spec.rules)
    if not lo <= len(args) <= hi:
        raise ValueError(f"op {text!r}: takes {lo}-{hi} argument(s), got {len(args)} ({spec.doc})")
    args = tuple(int(a) if a.is_integer() else a for a in args)
    for (arg, rule), a in zip(spec.rules, args):
        if not rule.holds(a):
            raise ValueError(f"op {text!r}: {arg} must be {rule.says} ({spec.doc})")
    if spec.check is not None and (wrong := spec.check(*args)):
        raise ValueError(f"op {text!r}: {wrong} ({spec.doc})")
    return name, args


def build(text: str) -> tuple[Callable | None, Callable]:
    """The (draw, apply) of an op's text."""
    name, args = parse(text)
    return OPS[name].make(*args)


def output_shape(texts: list[str], input_shape: tuple) -> tuple:
    """(height, width, channels) the ops make of images of `input_shape` (None: varies or unknown),
    from the grammar alone: what a pp list must agree with the model on, before any compute."""
    shape = tuple(input_shape)
    for text in texts:
        name, args = parse(text)
        if OPS[name].shape is not None:
            shape = OPS[name].shape(shape, *args)
    return shape


def _shorter_side_to(shape, size):
    h, w, c = shape
    if h is None or w is None:
        return None, None, c
    return (size, round(w * size / h), c) if h <= w else (round(h * size / w), size, c)


def default_ops(image_size: int, channels: int, value_range=(-1.0, 1.0), crop_padding=0, flip=False) -> list[str]:
    """Today's pipeline as ops: what `pp_train` / `pp_eval` are when not given."""
    lo, hi = value_range
    ops = ["decode", f"resize({image_size})", f"channels({channels})", f"value_range({lo:g}, {hi:g})"]
    return ops + ([f"reflect_crop({crop_padding})"] if crop_padding else []) + (["flip_lr"] if flip else [])


# ----------------------------------------------------------------------------- helpers
def _hw(x):
    shape = tf.shape(x)
    return shape[-3], shape[-2]


def _float(x):
    return tf.cast(x, tf.float32)


def _resize(x, h, w):
    x = _float(x)
    if isinstance(h, int) and x.shape[-3] == h and x.shape[-2] == w:
        return x  # already that size (as the legacy `preprocess` did): no resampling
    return tf.image.resize(x, tf.stack([h, w]) if not isinstance(h, int) else (h, w), "bilinear", antialias=True)


def augment_draws(seed, batch: int, crop_padding: int):
    """Per-image random crop offsets [batch, 2] and flip coins [batch] from a stateless seed."""
    offs = tf.random.stateless_uniform([batch, 2], seed=seed, minval=0, maxval=2 * crop_padding + 1, dtype=tf.int32)
    coin = tf.random.stateless_uniform([batch], seed=seed + 1) < 0.5
    return offs, coin


def augment(x, offs, coin, crop_padding: int, flip: bool):
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


def _inception_window(shape, seed, area_min: float):
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


def _to_size(crop, size: int):
    # Bilinear without antialiasing, as big_vision's inception crop: antialiased downscaling of a large
    # crop costs more than decoding the JPEG (benchmarks/README.md, "Streaming input").
    return tf.image.resize(_float(crop), (size, size), "bilinear")


# ----------------------------------------------------------------------------- the ops
@op(shape=lambda s, channels=None: (s[0], s[1], channels or s[2]))
def decode(channels: Size | None = None):
    """decode(channels?): encoded image -> uint8 [H, W, C] (channels: the dataset's, or forced)"""

    def apply(x, _, native: int | None = None):
        if x.dtype != tf.string:  # already pixels (the in-memory path)
            return x
        c = channels or native or 3
        return tf.ensure_shape(tf.io.decode_image(x, channels=c, expand_animations=False), [None, None, c])

    apply.decodes = True
    return None, apply


@op(shape=lambda s, h, w=None: (h, w or h, s[2]))
def resize(h: Size, w: Size | None = None):
    """resize(size) or resize(h, w): bilinear, antialiased"""
    return None, lambda x, _: _resize(x, h, w or h)


@op(shape=_shorter_side_to)
def resize_small(size: Size):
    """resize_small(size): shorter side to size, aspect kept"""

    def apply(x, _):
        h, w = _hw(x)
        scale = size / tf.cast(tf.minimum(h, w), tf.float32)
        nh = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        nw = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        return tf.image.resize(_float(x), tf.stack([nh, nw]), "bilinear", antialias=True)

    return None, apply


@op(shape=lambda s, size: (size, size, s[2]))
def central_crop(size: Size):
    """central_crop(size): the central size x size"""

    def apply(x, _):
        h, w = _hw(x)
        return tf.image.crop_to_bounding_box(x, (h - size) // 2, (w - size) // 2, size, size)

    return None, apply


@op(shape=lambda s, size, area_min=5: (size, size, s[2]))
def inception_crop(size: Size, area_min: Percent = 5):
    """inception_crop(size, area_min%=5): random area and aspect, resized to size"""

    def one(x, seed):
        begin, extent = _inception_window(tf.shape(x), seed, area_min)
        return _to_size(tf.slice(x, begin, extent), size)

    def apply(x, d):
        if x.shape.rank == 4:
            return tf.map_fn(lambda a: one(*a), (x, d), fn_output_signature=tf.TensorSpec([size, size, None]))
        return one(x, d)

    return _inception_draw, apply


@op(shape=lambda s, size, area_min=5: (size, size, s[2]))
def decode_jpeg_and_inception_crop(size: Size, area_min: Percent = 5):
    """decode_jpeg_and_inception_crop(size, area_min%=5): both, decoding the crop only

    big_vision's fused op: the same random window as decode + inception_crop, but a JPEG decodes
    only the window's rows and columns. Pixels near the window's edge can differ from a full decode's
    (the chroma is upsampled from the cropped data); other encodings and pixels take the two ops."""
    _, crop = inception_crop(size, area_min)

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
            return crop(decode(c)[1](x, None), seed)

        return tf.ensure_shape(tf.cond(tf.io.is_jpeg(x), fused, unfused), [size, size, c])

    apply.decodes = True
    return _inception_draw, apply


@op
def reflect_crop(pad: Pad):
    """reflect_crop(pad): reflect-pad by pad, random crop back to the size"""

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


@op
def flip_lr():
    """flip_lr: random left-right flip"""

    def draw(base, n):
        return augment_draws(base, n, 0)[1]

    def apply(x, coin):
        if x.shape.rank == 4:
            return augment(x, None, coin, 0, flip=True)
        # tf.cond, not tf.where: a select broadcasting a scalar costs 4x the flip itself
        return tf.cond(coin, lambda: tf.reverse(x, axis=[1]), lambda: x)

    return draw, apply


@op(shape=lambda s, n: (s[0], s[1], n))
def channels(n: Size):
    """channels(n): grey <-> RGB"""

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


@op(check=lambda lo, hi: None if lo < hi else "needs lo < hi")
def value_range(lo: Number, hi: Number):
    """value_range(lo, hi): 0..255 -> lo..hi (float32)"""
    return None, lambda x, _: _float(x) * ((hi - lo) / 255.0) + lo
