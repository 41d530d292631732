"""The ViT family of "Scaling Vision Transformers" (Zhai et al., 2022) as one Flax module.

The model as the paper describes it: patch embedding, position embedding, pre-LayerNorm encoder
blocks, a pooling head (gap, tok, map or none) and a linear classifier. Variants ("B/16") decode
from `vitscale.models.variants`. Two products can be computed another way by a backend
(`Kernels`: the MLP's dense layers and self-attention); `vitscale.backend` holds the CPU ones and
is the one place they are switched on. The parameters are the same either way:

  embedding/{kernel,bias}                 patch embedding, kernel [p, p, C, D]
  cls                                     class token [1, 1, D]           (pool_type "tok")
  pos_embedding                           [1, N, D]                        (posemb "learn")
  Transformer/encoderblock_{i}/...        one block per layer, or
  Transformer/encoderblock/...            all layers stacked on a leading axis (scan=True)
      LayerNorm_0, Attention/{qkv,out}/{kernel,bias}, LayerNorm_1, MlpBlock/Dense_{0,1}/{kernel,bias}
  Transformer/encoder_norm/{scale,bias}
  MAPHead/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}   (pool_type "map")
  pre_logits/{kernel,bias}                [D, R], then tanh                (representation_size R)
  head/{kernel,bias}                      [D or R, classes], kernel zero-initialised

Two options exist for weights trained elsewhere (vitscale.pretrained reads and writes their files):
`representation_size`, the tanh representation layer of the original ViT, and `gelu`: "tanh" is
flax's default approximation (what vitscale, big_vision and vision_transformer train with), "erf"
the exact one (PyTorch's nn.GELU, what timm evaluates released weights with). The class token's
position embedding of vision_transformer's files (a [1, 1+N, D] table) needs no option: it is
folded into `cls` on import, as big_vision's loader does.

Precision policy (`dtype`, the `dtype` parameter): with bfloat16 the matmul inputs and the
activations between them are bf16 (nn.Dense / nn.Conv / DenseParams cast kernels and inputs to
`dtype`; XLA accumulates bf16 products in float32 on GPUs and TPUs); parameters stay float32
(`param_dtype`, DenseParams), and so the optimizer's updates; LayerNorm statistics are float32
(flax computes mean and variance in at least float32); attention logits and softmax are float32
(self_attention below; backend.self_attention); the head and its logits are float32 (ViT.__call__),
and the loss (vitscale.loop). With float32 everything is float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vitscale.models.variants import POOL_TYPES, POSEMB_TYPES, VARIANTS, Variant, decode_variant

__all__ = ["POOL_TYPES", "POSEMB_TYPES", "VARIANTS", "Variant", "decode_variant", "Kernels", "PLAIN", "ViT"]


def sincos2d_posemb(h: int, w: int, width: int, temperature: float = 10_000.0) -> jnp.ndarray:
    """Fixed 2D sine-cosine position embedding [1, h*w, width] (MoCo v3 / big_vision)."""
    if width % 4:
        raise ValueError(f"posemb 'sincos2d' needs a width divisible by 4, got {width}")
    y, x = jnp.mgrid[:h, :w]
    omega = 1.0 / temperature ** (jnp.arange(width // 4) / (width // 4 - 1 if width > 4 else 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)[None]


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


def attention_implementation(platform: str, dtype: Any, head_dim: int, compute_capability: str | None = None) -> str:
    """The one choice of `jax.nn.dot_product_attention`'s implementation: "cudnn" (fused flash
    attention) on an NVIDIA GPU when its constraints hold, "xla" otherwise. cuDNN needs bf16 or fp16
    inputs and a head dimension that is a multiple of 8, at most 256 on Hopper (compute capability
    9.0 and later) and 128 before it (jax/_src/cudnn/fused_attention_stablehlo.py, check_is_flash_attention).
    `compute_capability` None: assume Hopper (every ViT variant's head dimension is at most 128)."""
    if platform not in ("gpu", "cuda"):
        return "xla"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "xla"
    hopper = compute_capability is None or tuple(int(x) for x in compute_capability.split(".")[:2]) >= (9, 0)
    if head_dim % 8 or head_dim > (256 if hopper else 128):
        return "xla"
    return "cudnn"


def self_attention(
    x, qkv_kernel, qkv_bias, out_kernel, out_bias, num_heads: int, implementation: str = "xla"
) -> jax.Array:
    """Multi-head self-attention from a fused [D, 3D] QKV projection: softmax(q k^T / sqrt(d)) v.
    Both implementations compute the logits and the softmax in float32 for bf16 inputs (XLA's:
    jax.nn's _dot_product_attention_core; cuDNN's: inside the fused kernel)."""
    b, n, d = x.shape
    qkv = (x @ qkv_kernel + qkv_bias).reshape(b, n, 3, num_heads, d // num_heads)
    out = jax.nn.dot_product_attention(
        qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation=implementation
    )  # [b, n, heads, d / heads]
    return out.reshape(b, n, d) @ out_kernel + out_bias


@dataclass(frozen=True)
class Kernels:
    """How the two hot products are computed: the dense layers' `dot_general` (nn.Dense's argument)
    and `self_attention` (same signature as the function above)."""

    dot_general: Callable = jax.lax.dot_general
    self_attention: Callable = self_attention


PLAIN = Kernels()
CUDNN = Kernels(self_attention=functools.partial(self_attention, implementation="cudnn"))


def plain_kernels(implementation: str = "xla") -> Kernels:
    """The plain products with this attention implementation ("xla": PLAIN, "cudnn": CUDNN)."""
    return {"xla": PLAIN, "cudnn": CUDNN}[implementation]


class DenseParams(nn.Module):
    """The kernel [in, out] and bias [out] of an `nn.Dense` (same names, shapes and init), returned
    instead of applied, for products that a `Kernels` computes its own way."""

    features: int
    dtype: Any = jnp.float32
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, in_features: int):
        # Precision: parameters are float32; the products get them cast to the compute dtype.
        kernel = self.param("kernel", nn.initializers.xavier_uniform(), (in_features, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class MlpBlock(nn.Module):
    """Dense -> GELU -> dropout -> Dense, back to the input width."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    kernels: Kernels = PLAIN
    gelu: str = "tanh"  # "tanh": flax's default approximation; "erf": the exact GELU

    @nn.compact
    def __call__(self, x, deterministic=True):
        dense = lambda features, name: nn.Dense(
            features,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
            dot_general=self.kernels.dot_general,
            name=name,
        )
        d = x.shape[-1]
        x = nn.gelu(dense(self.mlp_dim, "Dense_0")(x), approximate=self.gelu != "erf")
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        return dense(d, "Dense_1")(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (parameters qkv and out, as nn.Dense)."""

    num_heads: int
    dtype: Any = jnp.float32
    kernels: Kernels = PLAIN
    q_scale: float = 1.0  # times the queries (muP's 1/head_dim logits: vitscale.mup)

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        qkv_kernel, qkv_bias = DenseParams(3 * d, dtype=self.dtype, name="qkv")(d)
        if self.q_scale != 1.0:
            scale = jnp.concatenate([jnp.full((d,), self.q_scale), jnp.ones((2 * d,))]).astype(self.dtype)
            qkv_kernel, qkv_bias = qkv_kernel * scale, qkv_bias * scale
        out_kernel, out_bias = DenseParams(d, dtype=self.dtype, name="out")(d)
        return self.kernels.self_attention(
            x.astype(self.dtype), qkv_kernel, qkv_bias, out_kernel, out_bias, self.num_heads
        )


class Encoder1DBlock(nn.Module):
    """Pre-LayerNorm transformer block."""

    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    kernels: Kernels = PLAIN
    gelu: str = "tanh"
    q_scale: float = 1.0
    residual_scale: float = 1.0  # times each residual branch (CompleteP: vitscale.mup)

    @nn.compact
    def __call__(self, x, deterministic=True):
        # Precision: LayerNorm's mean and variance in float32 (flax's _compute_stats), output in dtype.
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = Attention(self.num_heads, self.dtype, self.kernels, self.q_scale, name="Attention")(y)
        x = x + self._branch(nn.Dropout(rate=self.dropout)(y, deterministic))
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = MlpBlock(
            self.mlp_dim, self.dropout, dtype=self.dtype, kernels=self.kernels, gelu=self.gelu, name="MlpBlock"
        )(y, deterministic)
        return x + self._branch(nn.Dropout(rate=self.dropout)(y, deterministic))

    def _branch(self, y):
        return y if self.residual_scale == 1.0 else y * jnp.asarray(self.residual_scale, y.dtype)


class _ScanBlock(Encoder1DBlock):
    """Encoder1DBlock with the (carry, out) signature nn.scan wants."""

    @nn.compact
    def __call__(self, x, deterministic=True):  # type: ignore[override]
        return super().__call__(x, deterministic), None


class Encoder(nn.Module):
    depth: int
    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    remat: bool = False
    scan: bool = False
    dtype: Any = jnp.float32
    kernels: Kernels = PLAIN
    gelu: str = "tanh"
    q_scale: float = 1.0
    residual_scale: float = 1.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        kw = dict(
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout,
            dtype=self.dtype,
            kernels=self.kernels,
            gelu=self.gelu,
            q_scale=self.q_scale,
            residual_scale=self.residual_scale,
        )
        if self.scan:
            block = _ScanBlock
            if self.remat:
                block = nn.remat(block, prevent_cse=False, static_argnums=(2,))
            x, _ = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.depth,
            )(name="encoderblock", **kw)(x, deterministic)
        else:
            block = nn.remat(Encoder1DBlock, static_argnums=(2,)) if self.remat else Encoder1DBlock
            for i in range(self.depth):
                x = block(name=f"encoderblock_{i}", **kw)(x, deterministic)
        return nn.LayerNorm(name="encoder_norm", dtype=self.dtype)(x)


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens, then a residual MLP."""

    mlp_dim: int
    num_heads: int
    dtype: Any = jnp.float32
    gelu: str = "tanh"

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]), jnp.float32)
        probe = jnp.tile(probe, (x.shape[0], 1, 1)).astype(x.dtype)
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform()
        )(probe, x)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, gelu=self.gelu)(y)
        return x[:, 0]


class ViT(nn.Module):
    """Vision Transformer. Returns (logits, {"encoded": tokens, "pre_logits": features})."""

    num_classes: int
    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    pool_type: str = "gap"
    posemb: str = "learn"
    dropout: float = 0.0
    head_bias_init: float = 0.0
    remat: bool = False
    scan: bool = False
    dtype: Any = jnp.float32  # activations; parameters stay float32
    kernels: Kernels = PLAIN
    representation_size: int | None = None  # a tanh representation layer `pre_logits` after pooling
    gelu: str = "tanh"  # "tanh" (flax's default approximation) or "erf" (exact)
    # A parametrization's multipliers (vitscale.mup; 1 and None: the standard model).
    q_scale: float = 1.0  # times the queries
    residual_scale: float = 1.0  # times each residual branch
    head_scale: float = 1.0  # times the head's input: logits = head_scale * (x @ W) + b
    posemb_std: float | None = None  # learned position embedding's init std; None: 1/sqrt(width)

    @nn.compact
    def __call__(self, images, train: bool = False):
        out = {}
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="embedding", dtype=self.dtype)(
            images.astype(self.dtype)
        )
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        if self.posemb == "learn":
            init = nn.initializers.normal(stddev=self.posemb_std or 1 / np.sqrt(d))
            pe = self.param("pos_embedding", init, (1, gh * gw, d), jnp.float32)
        elif self.posemb == "sincos2d":
            pe = sincos2d_posemb(gh, gw, d)
        else:
            raise ValueError(f"posemb {self.posemb!r} not in {POSEMB_TYPES}")
        x = x + pe.astype(x.dtype)
        if self.pool_type == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
            x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)).astype(x.dtype), x], axis=1)
        x = nn.Dropout(rate=self.dropout)(x, not train)
        x = Encoder(
            self.depth,
            self.mlp_dim,
            self.num_heads,
            self.dropout,
            self.remat,
            self.scan,
            dtype=self.dtype,
            kernels=self.kernels,
            gelu=self.gelu,
            q_scale=self.q_scale,
            residual_scale=self.residual_scale,
            name="Transformer",
        )(x, not train)
        out["encoded"] = x
        if self.pool_type == "gap":
            x = jnp.mean(x, axis=1)
        elif self.pool_type == "tok":
            x = x[:, 0]
        elif self.pool_type == "map":
            x = MAPHead(self.mlp_dim, self.num_heads, dtype=self.dtype, gelu=self.gelu, name="MAPHead")(x)
        elif self.pool_type != "none":
            raise ValueError(f"pool_type {self.pool_type!r} not in {POOL_TYPES}")
        if self.representation_size:
            x = jnp.tanh(nn.Dense(self.representation_size, name="pre_logits", dtype=self.dtype)(x))
        out["pre_logits"] = x.astype(jnp.float32)
        # Precision: the head runs in float32 on float32 features (no dtype: flax's default float32).
        logits = nn.Dense(
            self.num_classes,
            name="head",
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
        )(x.astype(jnp.float32) if self.head_scale == 1.0 else x.astype(jnp.float32) * self.head_scale)
        return logits, out


def make_model(
    variant: str,
    num_classes: int,
    *,
    width: int | None = None,
    depth: int | None = None,
    mlp_dim: int | None = None,
    num_heads: int | None = None,
    **kw,
) -> ViT:
    """The one model factory: a ViT for a variant string, any of its shape overridden (None: the
    variant's); other keyword arguments are the ViT's options (pool_type, dtype, ...)."""
    v = decode_variant(variant)
    width, depth = width or v.width, depth or v.depth
    mlp_dim, num_heads = mlp_dim or v.mlp_dim, num_heads or v.num_heads
    if width % num_heads:
        raise ValueError(f"variant {variant!r}: width {width} is not divisible by heads {num_heads}")
    if kw.get("dtype") in ("bfloat16", "bf16"):
        kw["dtype"] = jnp.bfloat16
    elif kw.get("dtype") in ("float32", "f32", None):
        kw["dtype"] = jnp.float32
    return ViT(
        num_classes=num_classes,
        patch_size=v.patch_size,
        width=width,
        depth=depth,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        **kw,
    )


# ----------------------------------------------------------------------------- posemb resizing
def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of 1D linear interpolation, corners aligned (as scipy.ndimage.zoom)."""
    if n_in == 1:
        return np.ones((n_out, 1))
    pos = np.linspace(0, n_in - 1, n_out) if n_out > 1 else np.array([(n_in - 1) / 2])
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] += 1 - frac
    w[np.arange(n_out), lo + 1] += frac
    return w


def resize_posemb(posemb: np.ndarray, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinearly resize a learned [1, h*w, D] position embedding to [1, H*W, D] over its 2D grid."""
    posemb = np.asarray(posemb)
    n, d = posemb.shape[1], posemb.shape[2]
    if old_grid is None:
        s = int(round(np.sqrt(n)))
        if s * s != n:
            raise ValueError(f"pos_embedding has {n} tokens, not a square grid; pass old_grid")
        old_grid = (s, s)
    grid = posemb[0].reshape(*old_grid, d)
    wy, wx = _linear_weights(old_grid[0], new_grid[0]), _linear_weights(old_grid[1], new_grid[1])
    out = np.einsum("Yy,Xx,yxd->YXd", wy, wx, grid.astype(np.float64))
    return out.reshape(1, new_grid[0] * new_grid[1], d).astype(posemb.dtype)


def adapt_params(params: Any, target: Any) -> Any:
    """Fit loaded `params` to a model's freshly initialised `target`: resize pos_embedding, keep the
    rest; any other shape mismatch is an error naming the path and both shapes."""
    src, dst = traverse_util.flatten_dict(params, sep="/"), traverse_util.flatten_dict(target, sep="/")
    missing = sorted(set(dst) - set(src))
    if missing:
        raise ValueError(f"checkpoint lacks parameters {missing[:5]}{'...' if len(missing) > 5 else ''}")
    out = {}
    for path, want in dst.items():
        have = src[path]
        if have.shape == want.shape:
            out[path] = have
        elif path.endswith("pos_embedding") and have.shape[-1] == want.shape[-1]:
            s = int(round(np.sqrt(want.shape[1])))
            out[path] = resize_posemb(np.asarray(have), (s, s))
        else:
            raise ValueError(
                f"parameter {path}: checkpoint shape {have.shape} does not fit the model's "
                f"{want.shape} (only pos_embedding is resized)"
            )
    return traverse_util.unflatten_dict(out, sep="/")
