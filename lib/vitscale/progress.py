"""Progress bars that read well both live in JupyterLab and as text in an executed notebook.

Interactively a tqdm widget; in batch runs (papermill, scripts, tests) a text bar whose updates
are whole lines every `mininterval` seconds, so the saved notebook and its HTML show a short log
instead of one line rewritten with carriage returns (which widgets and HTML export both lose).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import std as tqdm_std


def batch_mode() -> bool:
    """True in papermill/CLI runs (VITSCALE_BATCH=1) or outside a Jupyter kernel."""
    if os.environ.get("VITSCALE_BATCH") == "1":
        return True
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is None or shell.__class__.__name__ != "ZMQInteractiveShell"
    except ImportError:
        return True


class _Lines:
    """A file-like target that turns tqdm's carriage-return refreshes into separate lines."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").replace("\x1b[A", "")
        if s.strip():
            self._stream.write(s.rstrip("\n") + "\n")

    def flush(self) -> None:
        self._stream.flush()


def bar(
    total: int | None = None,
    *,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    mininterval: float | None = None,
    **kw: Any,
):
    """A tqdm bar: a widget in an interactive kernel, whole text lines in batch runs."""
    if kw.get("disable"):
        return tqdm_std.tqdm(total=total, initial=initial, **kw)
    if batch_mode():
        return tqdm_std.tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            file=_Lines(sys.stdout),
            mininterval=10.0 if mininterval is None else mininterval,
            ascii=True,
            dynamic_ncols=False,
            ncols=100,
            **kw,
        )
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        mininterval=0.5 if mininterval is None else mininterval,
        **kw,
    )
