"""Library chatter into the run folder's log.txt instead of the shared report (batch runs only).

In an executed notebook, TensorFlow's, XLA's and absl's C++ logs (written to file descriptor 2),
Python `logging` and `warnings` all land in the report. `to_file(out_dir)` sends them to
`out_dir/log.txt` when the run folder exists (the CLI and the sweep create it before the kernel
starts); interactive sessions keep them on screen.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

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
    logging.raiseExceptions = False  # a log that cannot be written (disk full) is not a second error
    return path


def stream():
    """The open log file of this command (`capture`/`keep`), or None: where a kernel's stderr goes."""
    return _held.get("file")


_held: dict[str, Any] = {}  # the holding file of `capture` and the log file `keep` moved it to


def capture() -> None:
    """Library output of this command (C++ logs on fd 2, Python logging and warnings) into a holding
    file until `keep` names its log file; vitscale's own lines (sys.stderr) still reach the terminal.
    Nothing is written when the command ends before `keep` (a bad parameter file)."""
    if _held:
        return
    terminal = os.dup(2)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    hold = tempfile.TemporaryFile("w+")  # noqa: SIM115 - kept open for the life of the process
    os.dup2(hold.fileno(), 2)
    logging.basicConfig(handlers=[logging.StreamHandler(hold)], level=logging.INFO, force=True)
    logging.captureWarnings(True)
    logging.raiseExceptions = False
    _held["file"] = hold


def keep(path: str | Path) -> None:
    """Append what `capture` held to `path` (the run's log.txt, or a log beside the sweep) and send
    the rest of the command's library output there."""
    hold = _held.get("file")
    if hold is None:
        return
    try:
        hold.flush()
        hold.seek(0)
        held = hold.read()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the life of the process
        stream.write(held)
    except OSError:
        return  # a full disk: the output stays in the holding file
    os.dup2(stream.fileno(), 2)
    logging.basicConfig(handlers=[logging.StreamHandler(stream)], level=logging.INFO, force=True)
    hold.close()
    _held["file"] = stream
