"""Writing a file so that a reader never sees a torn one, and a full or failing disk as one line
(`WriteError`, which the command line prints without a traceback): below the run folder (`runs`),
so that checkpoints and caches write the same way."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class WriteError(Exception):
    """Writing a file failed (no space, I/O error); the message names the file and what."""


def atomic_write_text(path: str | Path, text: str, what: str | None = None) -> None:
    """Write a file so that readers see the old or the new content, never a torn one; a full disk is
    a WriteError naming the file and `what` it holds."""
    path = Path(path)
    with writing(path, what or path.name):
        _atomic_write(path, text)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


DISK_ERRORS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def disk_error(e: BaseException) -> OSError | None:
    """The OSError of a full or failing disk in `e` or its causes (libraries wrap them), or None."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in DISK_ERRORS:
            return e
        text = str(e)
        for code in DISK_ERRORS:
            if os.strerror(code) in text:
                return OSError(code, os.strerror(code))
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


@contextlib.contextmanager
def writing(path: str | Path, what: str) -> Iterator[None]:
    """Turn a full or failing disk while writing `what` to `path` into one WriteError line."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        if (err := disk_error(e)) is None:
            raise
        try:
            free = f", {shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MiB free there"
        except OSError:
            free = ""
        raise WriteError(
            f"{path}: writing {what} failed: {err.strerror}{free}; the newest complete checkpoint is kept: free "
            "space (or fix the disk) and run the same command again to resume"
        ) from None
