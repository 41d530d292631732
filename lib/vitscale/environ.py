"""Environment variables for the kernels vitscale starts, set for a scope and restored after it.

A kernel inherits os.environ when it starts, so a variable meant for it is set around the start and
put back afterwards: the calling process (a notebook, a library user) keeps its own environment.
Scopes may overlap across threads (a sweep's workers): a variable is restored when the last scope
holding it exits.
"""

from __future__ import annotations

import contextlib
import os
import threading

_lock = threading.Lock()
_held: dict[str, list] = {}  # name -> [scopes holding it, the value before the first]


@contextlib.contextmanager
def scoped(env: dict[str, str]):
    """`env` in os.environ for the duration; each name restored (or removed) when its last scope exits."""
    with _lock:
        for k, v in env.items():
            held = _held.setdefault(k, [0, os.environ.get(k)])
            held[0] += 1
            os.environ[k] = v
    try:
        yield
    finally:
        with _lock:
            for k in env:
                held = _held[k]
                held[0] -= 1
                if held[0]:
                    continue
                del _held[k]
                if held[1] is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = held[1]
