"""Parametrizations: the standard one and muP, as multipliers a ViT and its optimizer apply.

muP (Yang et al. 2021, "Tensor Programs V", Table 3 for Adam-like optimizers; the table of Dey et al.
2024, "The Practitioner's Guide to muP") scales initialisation, forward multipliers and per-layer
learning rates with the width multiplier m = width / base_width, so that the best learning rate
stops depending on width. With m = 1 every multiplier is 1 and the model is the standard one.

  hidden matrices (attention qkv/out, MLP, pre_logits)  init variance ~ 1/fan_in (xavier: already so
                                                         when both fans grow with width); lr / m
  patch embedding, biases, LayerNorms, cls              base lr, init unchanged
  position embedding                                    std 1/sqrt(base_width) (constant in width)
  head (zero-initialised)                               output multiplier 1/m, base lr
  attention logits                                      q.k sqrt(base_head_dim) / head_dim
  Adam's epsilon                                        eps / m (every gradient shrinks as 1/m)
  decoupled weight decay                                lr x wd kept per layer (the lr multiplier
                                                         scales the update, not the decay)

Depth (optional `base_depth`): CompleteP (Dey et al. 2025, "Don't be lazy", alpha = 1): each residual
branch times base_depth / depth; at alpha = 1 no learning rate changes with depth. The ladder grows
depth with width (Atto 2 layers, Micro 8), so without it a rate tuned on Atto meets 4x the layers.

`fold` writes the multipliers into the weights, so an exported muP model is a standard ViT.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from vitscale import config

# (regex over the '/'-joined parameter path, exponent): the learning-rate multiplier of a matching
# parameter is m ** exponent; the first match wins. Tensor Programs V, Table 3 (Adam): hidden weights
# lr ~ 1/fan_in; input weights, biases and norms lr ~ 1; output weights (with the 1/m multiplier) ~ 1.
MUP_LR_RULES: tuple[tuple[str, float], ...] = (
    (r"^Transformer/encoderblock[^/]*/(Attention|MlpBlock)/.*kernel$", -1.0),
    (r"^pre_logits/kernel$", -1.0),
    (r".*", 0.0),
)
PARAMETRIZATIONS = ("standard", "mup")


@dataclasses.dataclass(frozen=True)
class Multipliers:
    """What a parametrization asks of one model: forward multipliers, init and optimizer scales."""

    q_scale: float = 1.0  # times the query projection: attention logits sqrt(base_hd)/hd, not 1/sqrt(hd)
    head_scale: float = 1.0  # times the head's input: logits = scale * (x @ W) + b
    residual_scale: float = 1.0  # times each residual branch (CompleteP)
    posemb_std: float | None = None  # position embedding init std (None: 1/sqrt(width))
    lr_rules: tuple[tuple[str, float], ...] = ()  # (regex, learning-rate multiplier), first match wins
    eps_scale: float = 1.0  # times the optimizer's epsilon


def multipliers(spec: config.ModelSpec) -> Multipliers:
    """The multipliers of `spec`'s parametrization (standard: all 1)."""
    if spec.parametrization == "standard":
        return Multipliers()
    shape = spec.shape
    m = shape.width / spec.base_width
    head_dim = shape.width / shape.num_heads
    base_head_dim = spec.base_head_dim or head_dim / m  # None: the base model has as many heads
    return Multipliers(
        q_scale=math.sqrt(base_head_dim / head_dim),
        head_scale=1.0 / m,
        residual_scale=spec.base_depth / shape.depth if spec.base_depth else 1.0,
        posemb_std=1.0 / math.sqrt(spec.base_width),
        lr_rules=tuple((pattern, m**exponent) for pattern, exponent in MUP_LR_RULES),
        eps_scale=1.0 / m,
    )


def fold(flat: dict[str, Any], mult: Multipliers, width: int) -> dict[str, Any]:
    """`flat` ('/'-joined vitscale parameter names) with the forward multipliers written into the
    weights: the same function as a standard ViT (query columns, residual outputs, head kernel)."""
    out = dict(flat)
    for name, value in flat.items():
        if name.endswith("Attention/qkv/kernel") or name.endswith("Attention/qkv/bias"):
            q = value[..., :width] * mult.q_scale
            out[name] = _concat(q, value[..., width:])
        elif _residual_output(name):
            out[name] = value * mult.residual_scale
        elif name == "head/kernel":
            out[name] = value * mult.head_scale
    return out


def _residual_output(name: str) -> bool:
    """The last layer of a residual branch (attention's out projection, the MLP's second dense)."""
    return name.startswith("Transformer/encoderblock") and ("/Attention/out/" in name or "/Dense_1/" in name)


def _concat(a, b) -> np.ndarray:
    return np.concatenate([np.asarray(a), np.asarray(b)], axis=-1)
