"""Library chatter into the run folder's log.txt instead of the shared report (batch runs only).

In an executed notebook, TensorFlow's, XLA's and absl's C++ logs (written to file descriptor 2),
Python `logging` and `warnings` all land in the report. `to_file(out_dir)` sends them to
`out_dir/log.txt` when the run folder exists (the CLI and the sweep create it before the kernel
starts); interactive sessions keep them on screen.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

LOG_NAME = "log.txt"


def to_file(out_dir: str | Path) -> Path | None:
    """Redirect library output of this process to out_dir/log.txt; the path, or None if not a batch run."""
    out = Path(out_dir)
    if os.environ.get("VITSCALE_BATCH") != "1" or not out.is_dir():
        return None
    path = out / LOG_NAME
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the life of the process
    os.dup2(stream.fileno(), 2)  # C++ logs go to fd 2; Python's sys.stderr in a kernel is the notebook
    logging.basicConfig(handlers=[logging.StreamHandler(stream)], level=logging.INFO, force=True)
    logging.captureWarnings(True)
    return path
