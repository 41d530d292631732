"""A small natural-image dataset on disk for tests and benchmarks: class folders of JPEG/PNG files of
varying sizes (sklearn's 8x8 digits enlarged to random sizes and colourised, scikit-learn's two
sample photographs cropped at random), optionally with a corrupt file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photos() -> list[np.ndarray]:
    """scikit-learn's sample photographs (china.jpg, flower.jpg; 427 x 640 RGB)."""
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def write_folder(
    root: Path,
    per_class: int = 20,
    classes: int = 10,
    sizes: tuple[int, int] = (40, 300),
    seed: int = 0,
    corrupt: bool = False,
    photo_class: bool = True,
    split_folders: bool = False,
) -> Path:
    """Write `classes` digit classes (+ a "photo" class) of `per_class` images each under `root`:
    JPEG, with every 7th image a PNG (every 14th greyscale). Returns `root`."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    pics = photos()
    for c in range(classes + int(photo_class)):
        pool = np.flatnonzero(digits.target == c) if c < classes else None
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
            if pool is not None:
                grey = digits.images[pool[i % len(pool)]] / 16.0
                tint = rng.uniform(0.3, 1.0, 3)
                rgb = (grey[..., None] * tint * 255 + rng.uniform(0, 40)).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(rgb).resize((w, h), Image.BILINEAR)
            else:
                pic = pics[i % len(pics)]
                y, x = rng.integers(0, pic.shape[0] - 100), rng.integers(0, pic.shape[1] - 100)
                img = Image.fromarray(
                    pic[y : y + 100 + int(rng.integers(0, 200)), x : x + 100 + int(rng.integers(0, 300))]
                )
                img = img.resize((w, h), Image.BILINEAR)
            part = ("test" if i % 5 == 0 else "train") if split_folders else ""
            folder = root / part / (f"digit_{c}" if pool is not None else "photo")
            folder.mkdir(parents=True, exist_ok=True)
            if i % 7 == 3:
                (img.convert("L") if i % 14 == 3 else img).save(folder / f"{i:04d}.png")
            else:
                img.save(folder / f"{i:04d}.jpg", quality=90)
    if corrupt:
        (root / "digit_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root
