"""TensorFlow as vitscale uses it: tf.data and TFDS only, quiet, on the CPU. Set up once, by whichever
data module needs TensorFlow first, so that importing the grammar (`data.ops`) imports no framework."""

from __future__ import annotations

import functools
import os


@functools.cache
def tensorflow():
    """The `tensorflow` module, imported and set up on the first call."""
    # Its oneDNN notice is the only INFO line TensorFlow prints at import, and oneDNN's ops are not
    # what our pipeline spends its time in.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    # Offline by design: TensorFlow's cloud file system does not look for a GCE metadata server
    # (offline it printed google_auth_provider lines; where a firewall drops packets it can hang),
    # and TFDS knows its own datasets only (no community index from cloud storage).
    os.environ.setdefault("NO_GCE_CHECK", "true")
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import visibility

    visibility.set_availables([visibility.DatasetType.TFDS_PUBLIC])

    # tf.data runs on the CPU only; keep TensorFlow off any accelerator JAX is using.
    tf.config.set_visible_devices([], "GPU")
    if os.environ.get("VITSCALE_BATCH") == "1":
        tfds.disable_progress_bar()  # dataset preparation would print bars into the report
    return tf
