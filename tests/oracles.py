"""Independent references the tests compare the library against (test-only code, kept out of lib)."""

import numpy as np

from vitscale.data import tfsetup

tf = tfsetup.tensorflow()  # quiet and CPU-only, as the library sets it up


def preprocess(images: np.ndarray, image_size: int, channels: int, value_range=(-1.0, 1.0)):
    """The preprocessing before op lists (data.preprocess until issue 23): uint8 [B, H, W, C] -> float32
    [B, S, S, channels] in `value_range` (bilinear, antialiased resize; grey <-> RGB)."""
    x = tf.cast(images, tf.float32)
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = tf.image.resize(x, (image_size, image_size), method="bilinear", antialias=True)
    if x.shape[-1] != channels:
        if x.shape[-1] == 1:
            x = tf.tile(x, [1, 1, 1, channels])
        elif channels == 1:
            x = tf.image.rgb_to_grayscale(x)
        else:
            raise ValueError(f"cannot convert {x.shape[-1]} channels to {channels}")
    lo, hi = value_range
    return x * ((hi - lo) / 255.0) + lo
