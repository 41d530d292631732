"""Compute accounting: parameters and forward FLOPs of a ViT from its shapes, without allocating
parameters.

Conventions (checked in tests/test_flops.py and tabulated by benchmarks/variant_table.py):

- FLOPs count 2 per multiply-add. `forward_flops` counts every matmul and convolution, the
  attention products QK^T and AV included ("matmul FLOPs", the usual 2 x MACs). With
  `elementwise=True` it adds an estimate of the element-wise work (LayerNorm, GELU, softmax, bias
  and residual adds) as XLA's cost analysis counts it; that total tracks
  `jax.jit(f).lower(...).compile().cost_analysis()["flops"]` within 1% (0.7% on Atto/4, under
  0.1% from Micro up, 0.005% on B/16). XLA counts a scanned (scan=True) loop body once, so
  compare against unrolled models.
- The paper's Table 2 ("Scaling Vision Transformers", Zhai et al. 2022) counts the *backbone*:
  patch embedding, learned position embedding and encoder, at 224 px, with no class token (the
  paper drops it for GAP/MAP heads) and no head at all (neither the classifier nor the MAP head of
  g/14 and G/14: with it g/14 would be 1036M, not 1011M). Its GFLOPs are XLA-style counts of that
  backbone: matmuls plus element-wise ops (g/14: 533.1 in the paper, XLA's own count of our
  GAP backbone 533.10, matmuls alone 531.9). `paper_params` and `paper_flops` give exactly that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vitscale.models import vit

# Element-wise FLOPs as XLA's HloCostAnalysis counts them (measured on jax 0.10 / XLA CPU on
# isolated ops and on whole models; see tests/test_flops.py):
#   LayerNorm ~7 per element (+5 per row), GELU (tanh form) 8, softmax ~5 per attention score,
#   bias and residual adds 1. Per encoder block that is, with N tokens, width D, MLP size M and
#   H heads: 2 LayerNorms + 5 bias adds of width D + 2 residual adds + the MLP bias and GELU +
#   the scaled softmax, which XLA's fused graph counts as about 27·N·D + 9·N·M + 5·H·N².
_EW_BLOCK_ND, _EW_BLOCK_NM, _EW_SCORE = 27, 9, 5
# Outside the blocks: embedding bias, position-embedding add, final LayerNorm, pooling: ~10·N·D.
_EW_STEM_ND = 10


def _tokens(model: vit.ViT, image_shape: tuple[int, int, int], class_token: bool | None = None) -> tuple[int, int]:
    """(patches, tokens through the encoder)."""
    h, w, _ = image_shape
    p = model.patch_size
    patches = (h // p) * (w // p)
    cls = model.pool_type == "tok" if class_token is None else class_token
    return patches, patches + (1 if cls else 0)


def count_params(model: vit.ViT, image_shape: tuple[int, int, int], *, include_head: bool = True) -> int:
    """Number of parameters, from `jax.eval_shape` (nothing is allocated, G/14 included).

    include_head=False leaves out the classifier (`head/`) and a MAP pooling head (`MAPHead/`):
    the backbone, as the paper's Table 2 counts it.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
    params = shapes["params"]
    if not include_head:
        params = {k: v for k, v in params.items() if k not in ("head", "MAPHead")}
    return int(sum(x.size for x in jax.tree.leaves(params)))


def forward_flops(
    model: vit.ViT, image_shape: tuple[int, int, int], *, include_head: bool = True, elementwise: bool = False
) -> int:
    """FLOPs of one image's forward pass: every matmul and convolution (2 per multiply-add), the
    attention products QK^T and AV included; element-wise work (norms, softmax, GELU, adds) only
    with `elementwise=True` (an estimate of what XLA's cost analysis counts).

    include_head=False leaves out the classifier and the MAP pooling head (the backbone).
    """
    _, _, c = image_shape
    patches, n = _tokens(model, image_shape)
    p, d, m, k, h = model.patch_size, model.width, model.mlp_dim, model.num_classes, model.num_heads
    macs = patches * p * p * c * d  # patch embedding
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * m  # qkv, QK^T and AV, out, MLP
    macs += model.depth * block
    if include_head:
        if model.pool_type == "map":  # one probe query attending over n tokens, then the MLP
            macs += d * d + n * d * 2 * d + 2 * n * d + d * d + 2 * d * m
        macs += n * d * k if model.pool_type == "none" else d * k
    flops = 2 * macs
    if elementwise:
        flops += model.depth * (_EW_BLOCK_ND * n * d + _EW_BLOCK_NM * n * m + _EW_SCORE * h * n * n)
        flops += _EW_STEM_ND * n * d
    return int(flops)


def training(forward_per_image: float, images: float) -> float:
    """The one rule for training compute: 3 x forward (forward + backward, the backward pass costing
    two forwards) x images. Every count of training FLOPs (summaries, MFU, the planner) goes through here."""
    return 3 * forward_per_image * images


def train_flops(model: vit.ViT, image_shape: tuple[int, int, int], images_seen: int, **kw) -> int:
    """Training compute of a model (`training` over its forward FLOPs). Keyword arguments go to `forward_flops`."""
    return training(forward_flops(model, image_shape, **kw), images_seen)


# ----------------------------------------------------------------------------- the paper's Table 2
# name: (params in millions, GFLOPs at 224 px) as printed in Table 2 of the paper.
PAPER_TABLE2: dict[str, tuple[float, float]] = {
    "s/28": (5.4, 0.7),
    "s/16": (5.0, 2.2),
    "S/32": (22, 2.3),
    "Ti/16": (5.5, 2.5),
    "B/32": (87, 8.7),
    "S/16": (22, 9.2),
    "B/28": (87, 11.3),
    "B/16": (86, 35.1),
    "L/16": (303, 122.9),
    "g/14": (1011, 533.1),
    "G/14": (1843, 965.3),
}
# The pooling the paper trained each variant with (g and G: MAP heads); Table 2 counts none of it.
PAPER_POOL = {"g/14": "map", "G/14": "map"}


def paper_model(variant: str, num_classes: int = 1000, **kw) -> vit.ViT:
    """The paper's model for a Table-2 variant: GAP head (MAP for g/14 and G/14), learned posemb."""
    kw.setdefault("pool_type", PAPER_POOL.get(variant, "gap"))
    return vit.make_model(variant, num_classes, **kw)


def paper_params(model: vit.ViT, image_shape: tuple[int, int, int] = (224, 224, 3)) -> int:
    """Parameters as Table 2 counts them: the backbone (no head, no MAP head)."""
    return count_params(model, image_shape, include_head=False)


def paper_flops(model: vit.ViT, image_shape: tuple[int, int, int] = (224, 224, 3)) -> int:
    """Forward FLOPs as Table 2 counts them: the backbone without class token, XLA-style
    (matmuls at 2 per multiply-add plus element-wise work)."""
    backbone = model.clone(pool_type="gap") if model.pool_type in ("tok", "map") else model
    return forward_flops(backbone, image_shape, include_head=False, elementwise=True)
