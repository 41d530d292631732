"""Optimizer-state memory (bytes per parameter) for ViT-B/16 and ViT-G/14.

Computed with `jax.eval_shape(optimizer.init, ...)`, so nothing is allocated.
The parameter-shape pytree follows the big_vision ViT layout (built here, not
imported from a model): patch embedding, learned position embedding, `depth`
encoder blocks (fused qkv), final LayerNorm and a linear head with
`--num-classes` outputs. G/14's MAP head in the paper is not modelled (it is
< 1% of G's parameters and would only change the per-param ratios marginally).

Usage: .venv/bin/python benchmarks/optimizer_memory.py [--num-classes 1000]
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vitscale import optim

# name: (width D, depth, mlp dim M, patch p, tokens N)
VARIANTS = {
    "ViT-B/16": (768, 12, 3072, 16, 196),
    "ViT-G/14": (1664, 48, 8192, 14, 256),
}


def vit_param_shapes(
    width: int, depth: int, mlp_dim: int, patch: int, num_tokens: int, num_classes: int = 1000
) -> dict[str, Any]:
    """Nested dict of jax.ShapeDtypeStruct (float32) in the ViT param layout."""
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    d, m = width, mlp_dim
    layer_norm = lambda: {"scale": f32(d), "bias": f32(d)}
    block = lambda: {
        "LayerNorm_0": layer_norm(),
        "Attention": {
            "qkv": {"kernel": f32(d, 3 * d), "bias": f32(3 * d)},
            "out": {"kernel": f32(d, d), "bias": f32(d)},
        },
        "LayerNorm_1": layer_norm(),
        "MlpBlock": {
            "Dense_0": {"kernel": f32(d, m), "bias": f32(m)},
            "Dense_1": {"kernel": f32(m, d), "bias": f32(d)},
        },
    }
    transformer = {f"encoderblock_{i}": block() for i in range(depth)}
    transformer["encoder_norm"] = layer_norm()
    return {
        "embedding": {"kernel": f32(patch, patch, 3, d), "bias": f32(d)},
        "pos_embedding": f32(1, num_tokens, d),
        "Transformer": transformer,
        "head": {"kernel": f32(d, num_classes), "bias": f32(num_classes)},
    }


def optimizers() -> dict[str, optax.GradientTransformation]:
    """The compared optimizers, each with its full training chain."""
    return {
        "paper adafactor (bf16 m)": optim.make_optimizer("adafactor", 1e-3),
        "adam (bf16 mu, f32 nu)": optim.make_optimizer("adam", 1e-3),
        "adam f32 (optax.adam)": optax.adam(1e-3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args()
    txs = optimizers()
    name_w = max(map(len, txs))
    print(f"{'model':<10} {'params':>8}  {'optimizer':<{name_w}} {'bytes/param':>11} {'state GiB':>9}")
    results = {}
    for model, dims in VARIANTS.items():
        shapes = vit_param_shapes(*dims, num_classes=args.num_classes)
        n = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
        for opt_name, tx in txs.items():
            bpp = optim.state_bytes_per_param(tx, shapes)
            results[model, opt_name] = bpp
            print(f"{model:<10} {n / 1e6:>7.1f}M  {opt_name:<{name_w}} {bpp:>11.3f} {bpp * n / 2**30:>9.2f}")
    worst = max(v for (_, o), v in results.items() if o.startswith("paper"))
    status = "OK" if worst <= 2.1 else "ABOVE TARGET"
    print(f"\npaper adafactor worst case: {worst:.3f} bytes/param (target <= 2.1; f32 Adam is 8): {status}")


if __name__ == "__main__":
    main()
