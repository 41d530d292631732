"""Compute accounting: parameters and forward FLOPs of a ViT from its shapes (2 FLOPs per
multiply-add, attention included), without allocating parameters."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vitscale.models import vit


def count_params(model: vit.ViT, image_shape: tuple[int, int, int]) -> int:
    """Number of parameters, from `jax.eval_shape` (nothing is allocated, G/14 included)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
    return int(sum(x.size for x in jax.tree.leaves(shapes)))


def forward_flops(model: vit.ViT, image_shape: tuple[int, int, int]) -> int:
    """FLOPs of one image's forward pass: every matmul and convolution (2 per multiply-add),
    the attention products QK^T and AV included; element-wise work (norms, softmax, GELU) excluded."""
    h, w, c = image_shape
    p, d, m, k = model.patch_size, model.width, model.mlp_dim, model.num_classes
    n = (h // p) * (w // p) + (1 if model.pool_type == "tok" else 0)
    macs = (h // p) * (w // p) * p * p * c * d  # patch embedding
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * m  # qkv, QK^T and AV, out, MLP
    macs += model.depth * block
    if model.pool_type == "map":  # one probe query attending over n tokens, then the MLP
        macs += d * d + n * d * 2 * d + 2 * n * d + d * d + 2 * d * m
    if model.pool_type == "none":
        macs += n * d * k
    else:
        macs += d * k
    return 2 * macs


def train_flops(model: vit.ViT, image_shape: tuple[int, int, int], images_seen: int) -> int:
    """Training compute: 3 x forward (forward + backward) x images seen."""
    return 3 * forward_flops(model, image_shape) * images_seen
