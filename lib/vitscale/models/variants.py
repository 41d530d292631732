"""The ViT variant table: "NAME/PATCH" strings decode into width, depth, MLP size and heads.

Plain Python (no JAX), so parameter schemas can check a variant without importing a framework;
nothing else in the code spells these numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# name: (width, depth, mlp_dim, heads). Paper Table 2 and big_vision; the CPU ladder is ours.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    # CPU-scale ladder for 28-32 px images (parameters at 28 px, 10 classes, GAP head; the same at patch 7 and 4):
    "Zepto": (16, 2, 64, 2),  # 8k: below Atto so that IsoFLOP profiles of the CPU studies can turn
    "Atto": (32, 2, 128, 2),  # 28k
    "Femto": (48, 3, 192, 3),  # 89k
    "Pico": (64, 4, 256, 4),  # 205k
    "Nano": (96, 6, 384, 4),  # 679k
    "Micro": (128, 8, 512, 4),  # 1.6M
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
    """A variant to its shape: "B/16" → Variant(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)."""
    m = re.fullmatch(r"([A-Za-z0-9]+)/(\d+)", variant or "")
    if not m or m.group(1) not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not NAME/PATCH with NAME in {list(VARIANTS)} (e.g. 'B/16', 'Pico/4')")
    width, depth, mlp, heads = VARIANTS[m.group(1)]
    return Variant(m.group(1), int(m.group(2)), width, depth, mlp, heads)
