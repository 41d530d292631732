"""The ViT family of "Scaling Vision Transformers" (Zhai et al., 2022) as one Flax module.

A variant string "NAME/PATCH" (e.g. "B/16", "G/14", "Pico/4") decodes from the table below into
width, depth, MLP size and heads; nothing else in the code spells those numbers.

Parameter layout (the paths optimizer rules and sharding rules match against):
  embedding/{kernel,bias}                 patch embedding, kernel [p, p, C, D]
  cls                                     class token [1, 1, D]           (pool_type "tok")
  pos_embedding                           [1, N, D]                        (posemb "learn")
  Transformer/encoderblock_{i}/...        one block per layer, or
  Transformer/encoderblock/...            all layers stacked on a leading axis (scan=True)
      LayerNorm_0, Attention/{qkv,out}/{kernel,bias}, LayerNorm_1, MlpBlock/Dense_{0,1}/{kernel,bias}
  Transformer/encoder_norm/{scale,bias}
  MAPHead/{probe, Attention/..., LayerNorm, MlpBlock/...}                 (pool_type "map")
  head/{kernel,bias}                      [D, classes], kernel zero-initialised
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# name: (width, depth, mlp_dim, heads). Paper Table 2 and big_vision; the CPU ladder is ours.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    # CPU-scale ladder for 28-32 px images (params at 28 px, patch 4, 10 classes, GAP head):
    "Atto": (32, 2, 128, 2),  # ~27k
    "Femto": (48, 3, 192, 3),  # ~87k
    "Pico": (64, 4, 256, 4),  # ~0.20M
    "Nano": (96, 6, 384, 4),  # ~0.67M
    "Micro": (128, 8, 512, 4),  # ~1.6M
    # The paper's family (Table 2) and the usual sizes:
    "s": (256, 6, 1024, 8),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),  # SoViT-400m (Alabdulmohsin et al., 2023)
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}
POOL_TYPES = ("gap", "tok", "map", "none")
POSEMB_TYPES = ("learn", "sincos2d")


@dataclass(frozen=True)
class Variant:
    """A decoded variant string."""

    name: str
    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int


def decode_variant(variant: str) -> Variant:
    """ "B/16" → Variant(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)."""
    m = re.fullmatch(r"([A-Za-z0-9]+)/(\d+)", variant or "")
    if not m or m.group(1) not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not NAME/PATCH with NAME in {list(VARIANTS)} (e.g. 'B/16', 'Pico/4')")
    width, depth, mlp, heads = VARIANTS[m.group(1)]
    return Variant(m.group(1), int(m.group(2)), width, depth, mlp, heads)


def sincos2d_posemb(h: int, w: int, width: int, temperature: float = 10_000.0) -> jnp.ndarray:
    """Fixed 2D sine-cosine position embedding [1, h*w, width] (MoCo v3 / big_vision)."""
    if width % 4:
        raise ValueError(f"posemb 'sincos2d' needs a width divisible by 4, got {width}")
    y, x = jnp.mgrid[:h, :w]
    omega = 1.0 / temperature ** (jnp.arange(width // 4) / (width // 4 - 1 if width > 4 else 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)[None]


def _transpose_weight_grads() -> bool:
    """Whether `matmul` computes its weight gradient from an explicitly transposed operand (XLA:CPU)."""
    return jax.default_backend() == "cpu"


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., in] @ kernel [in, out], with a weight gradient XLA:CPU runs at its matmul peak.

    Autodiff writes the kernel's gradient as a dot contracting x's token axis, its major one. XLA:CPU
    hands a dot to YNNPACK, its fast matmul library, only when the left operand contracts its minor
    axis, so this one ran on Eigen at about half the rate (profile of an S/4 step: ~2 core-seconds for
    the 116 GFLOP of MLP weight gradients, ~1.05 through YNNPACK). The backward here transposes the
    smaller of x and the output gradient into a buffer of its own (an optimization barrier keeps XLA
    from folding the transpose back into the dot), so every product is one YNNPACK takes: training
    step 1.05-1.06x on the benchmark's shapes A, B, C (benchmarks/README.md). Other backends get the
    plain products: their BLAS reads transposed operands for free.
    """
    return x @ kernel


def _matmul_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_bwd(res, g):
    x, kernel = res
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    if not _transpose_weight_grads():
        dk = x2.T @ g2
    elif x2.shape[1] <= g2.shape[1]:  # dK = (x^T) g, x^T its own buffer
        dk = jax.lax.optimization_barrier(x2.T) @ g2
    else:  # dK = ((g^T) x)^T: transpose the narrower g, and the small [out, in] product after it
        dk = jax.lax.optimization_barrier(jax.lax.optimization_barrier(g2.T) @ x2).T
    return g @ kernel.T, dk.astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class DenseParams(nn.Module):
    """The kernel [in, out] and bias [out] of a `nn.Dense` (same names and shapes; xavier-uniform
    kernel and zero bias unless given), returned instead of applied, so the caller can contract them
    in the layout it wants."""

    features: int
    dtype: Any = jnp.float32
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.initializers.xavier_uniform(), (in_features, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic=True):
        def dense(x, features, name):  # nn.Dense's parameters (names Dense_0, Dense_1), through `matmul`
            w, b = DenseParams(features, self.dtype, nn.initializers.normal(stddev=1e-6), name=name)(x.shape[-1])
            return matmul(x.astype(self.dtype), w) + b

        d = x.shape[-1]
        x = nn.gelu(dense(x, self.mlp_dim, "Dense_0"))
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        return dense(x, d, "Dense_1")


class Attention(nn.Module):
    """Multi-head attention: one fused [D, 3D] QKV projection (or a separate query for MAP pooling).

    Self-attention contracts the QKV kernel straight into [3, B, H, N, D/H] and the output kernel
    from [B, H, N, D/H], so no transposes sit between the matrix products (measured 1.02-1.12x a
    training step over `jax.nn.dot_product_attention` on [B, N, H, D/H], benchmarks/README.md).
    The parameter tree is that of `nn.Dense` layers named qkv and out (checkpoints are unchanged).
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, q_input=None):
        b, n, d = x.shape
        h = self.num_heads
        if q_input is not None:  # MAP head: one probe query, a tiny share of the compute
            dense = lambda f, name: nn.Dense(
                f, dtype=self.dtype, name=name, kernel_init=nn.initializers.xavier_uniform()
            )
            q = dense(d, "q")(q_input).reshape(b, q_input.shape[1], h, d // h)
            k, v = jnp.split(dense(2 * d, "kv")(x).reshape(b, n, 2, h, d // h), 2, axis=2)
            out = jax.nn.dot_product_attention(q, k[:, :, 0], v[:, :, 0])  # [b, nq, h, d/h]
            return dense(d, "out")(out.reshape(b, -1, d))

        x = x.astype(self.dtype)
        w, bias = DenseParams(3 * d, dtype=self.dtype, name="qkv")(d)
        qkv = jnp.einsum("bnd,dthk->tbhnk", x, w.reshape(d, 3, h, d // h)) + bias.reshape(3, 1, h, 1, d // h)
        q, k, v = qkv[0] * jnp.asarray((d // h) ** -0.5, self.dtype), qkv[1], qkv[2]
        logits = jnp.einsum("bhqk,bhsk->bhqs", q, k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqs,bhsk->bhqk", weights, v)
        w, bias = DenseParams(d, dtype=self.dtype, name="out")(d)
        return jnp.einsum("bhqk,hkd->bqd", out, w.reshape(h, d // h, d)) + bias


class Encoder1DBlock(nn.Module):
    """Pre-LayerNorm transformer block."""

    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic=True):
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = Attention(self.num_heads, dtype=self.dtype, name="Attention")(y)
        x = x + nn.Dropout(rate=self.dropout)(y, deterministic)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = MlpBlock(self.mlp_dim, self.dropout, dtype=self.dtype, name="MlpBlock")(y, deterministic)
        return x + nn.Dropout(rate=self.dropout)(y, deterministic)


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

    @nn.compact
    def __call__(self, x, deterministic=True):
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout, dtype=self.dtype)
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

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]), jnp.float32)
        probe = jnp.tile(probe, (x.shape[0], 1, 1)).astype(x.dtype)
        x = Attention(self.num_heads, dtype=self.dtype, name="Attention")(x, q_input=probe)
        y = nn.LayerNorm(name="LayerNorm", dtype=self.dtype)(x)
        x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="MlpBlock")(y)
        return x[:, 0]


class ViT(nn.Module):
    """Vision Transformer. Returns (logits, {"pre_logits": features, ...})."""

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
            pe = self.param(
                "pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(d)), (1, gh * gw, d), jnp.float32
            )
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
            name="Transformer",
        )(x, not train)
        out["encoded"] = x
        if self.pool_type == "gap":
            x = jnp.mean(x, axis=1)
        elif self.pool_type == "tok":
            x = x[:, 0]
        elif self.pool_type == "map":
            x = MAPHead(self.mlp_dim, self.num_heads, dtype=self.dtype, name="MAPHead")(x)
        elif self.pool_type != "none":
            raise ValueError(f"pool_type {self.pool_type!r} not in {POOL_TYPES}")
        out["pre_logits"] = x.astype(jnp.float32)
        logits = nn.Dense(
            self.num_classes,
            name="head",
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
        )(x.astype(jnp.float32))
        return logits, out


def make_model(variant: str, num_classes: int, **kw) -> ViT:
    """A ViT for a variant string; keyword arguments are the ViT's options (pool_type, ...)."""
    v = decode_variant(variant)
    if v.width % v.num_heads:
        raise ValueError(f"variant {variant!r}: width {v.width} is not divisible by heads {v.num_heads}")
    if kw.get("dtype") in ("bfloat16", "bf16"):
        kw["dtype"] = jnp.bfloat16
    elif kw.get("dtype") in ("float32", "f32", None):
        kw["dtype"] = jnp.float32
    return ViT(
        num_classes=num_classes,
        patch_size=v.patch_size,
        width=v.width,
        depth=v.depth,
        mlp_dim=v.mlp_dim,
        num_heads=v.num_heads,
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
    from flax import traverse_util

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
