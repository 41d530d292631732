"""TensorFlow as vitscale uses it: tf.data and TFDS only, quiet, on the CPU. Set up once, by whichever
data module needs TensorFlow first, so that importing the grammar (`data.ops`) imports no framework."""

from __future__ import annotations

import functools
import os

from vitscale import environ


@functools.cache
def tensorflow():
    """The `tensorflow` module, imported and set up on the first call."""
    # Set for the import only (TensorFlow reads them as it loads; its log level is fixed by the first
    # line it logs, at import): its oneDNN notice, the only INFO line it prints at import (oneDNN's ops
    # are not where our pipeline spends its time); and no GCE metadata-server probe from its cloud file
    # system (offline it printed google_auth_provider lines; where a firewall drops packets it can hang).
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0", "NO_GCE_CHECK": "true"}
    with environ.scoped({k: v for k, v in quiet.items() if k not in os.environ}):
        import tensorflow as tf
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import visibility

    # TFDS knows its own datasets only (no community index from cloud storage).
    visibility.set_availables([visibility.DatasetType.TFDS_PUBLIC])

    # tf.data runs on the CPU only; keep TensorFlow off any accelerator JAX is using.
    tf.config.set_visible_devices([], "GPU")
    if os.environ.get("VITSCALE_BATCH") == "1":
        tfds.disable_progress_bar()  # dataset preparation would print bars into the report
    return tf
