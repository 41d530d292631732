"""Start a process with jemalloc, set to keep the pages it frees, in place of the C library's malloc.

Why: on a CPU, XLA allocates each training step's temporary buffers (hundreds of MB) with malloc and
frees them when the step ends; glibc returns allocations above 32 MB to the kernel on free, so every
step faults in and zeroes that memory again. jemalloc with `dirty_decay_ms:-1,muzzy_decay_ms:-1`
keeps freed pages for the next step (the process's resident memory stays at its peak, which a
training run holds anyway). Speed-ups and the page-fault counts are in benchmarks/README.md.

A preloaded allocator has to be there when the process starts, so this module wraps a command:

    python -m vitscale.allocator CMD [ARGS...]

runs CMD with jemalloc preloaded when the system has it (Debian/Ubuntu `libjemalloc2`, conda-forge
`jemalloc`), and unchanged otherwise (other systems, or VITSCALE_MALLOC=system). The `vitscale`
Jupyter kernel (so `vitscale run`/`sweep` and JupyterLab), `make test` and the benchmarks start
through it; `vitscale sweep`, which trains groups of runs in its own process, starts itself again
with it (`relaunch_environment`). `current()` tells which allocator the running process has; runs record it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

LIBRARY = "libjemalloc.so.2"
# Keep freed pages (never purge them back to the OS): each step reuses the last step's memory.
MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
CHOICES = ("jemalloc", "system")  # VITSCALE_MALLOC values


def _choice(environ: dict[str, str]) -> str:
    value = environ.get("VITSCALE_MALLOC", "jemalloc")
    if value not in CHOICES:
        raise ValueError(f"VITSCALE_MALLOC must be one of {list(CHOICES)}, got {value!r}")
    return value


def find_jemalloc(environ: dict[str, str] | None = None) -> str | None:
    """Path of libjemalloc.so.2: the active conda env or venv's lib/, the system library folders,
    then the dynamic linker's cache. None if there is none (and always off Linux)."""
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return None
    roots = [environ.get("CONDA_PREFIX"), sys.prefix, sys.base_prefix]
    folders = [Path(r, "lib") for r in roots if r]
    folders += [
        Path(p)
        for p in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
    ]
    for folder in folders:
        if (folder / LIBRARY).is_file():
            return str(folder / LIBRARY)
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.strip().startswith(LIBRARY) and "=>" in line:
            path = line.split("=>", 1)[1].strip()
            if Path(path).is_file():
                return path
    return None


def environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default os.environ) that preloads jemalloc with MALLOC_CONF, when it is
    found and VITSCALE_MALLOC is not "system". A MALLOC_CONF the user set is kept."""
    env = dict(os.environ if environ is None else environ)
    if _choice(env) == "system":
        return env
    lib = find_jemalloc(env)
    if lib is None:
        return env
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if not any(Path(p).name == LIBRARY for p in preload):
        env["LD_PRELOAD"] = " ".join([lib, *preload])
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    return env


RELAUNCHED = "VITSCALE_RELAUNCHED"  # set in a process that relaunch_environment started again


def relaunch_environment(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to start this process again with, so that it has jemalloc (`environment`, and
    RELAUNCHED so that it is tried once); None when it has jemalloc already, there is none, it was tried,
    or VITSCALE_MALLOC is "system". For commands that train in their own process (a sweep's groups)."""
    environ = os.environ if environ is None else environ
    if environ.get(RELAUNCHED) or current() == "jemalloc":
        return None
    env = environment(environ)
    if env.get("LD_PRELOAD") == environ.get("LD_PRELOAD"):  # nothing to preload
        return None
    return {**env, RELAUNCHED: "1"}


def current() -> str:
    """The allocator in use: "jemalloc" if this process runs with jemalloc loaded, else "system"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "system"


def check(platform: str) -> str | None:
    """A warning for a CPU run in a process without jemalloc (None when there is nothing to say)."""
    if platform != "cpu" or current() == "jemalloc" or os.environ.get("VITSCALE_MALLOC") == "system":
        return None
    how = (
        "start Python through `python -m vitscale.allocator python ...` (the vitscale Jupyter kernel and "
        "`make` targets do)"
        if find_jemalloc()
        else "install jemalloc (`apt-get install libjemalloc2` or `conda install -c conda-forge jemalloc`) and "
        "start Python through `python -m vitscale.allocator python ...`"
    )
    return (
        f"this process uses the C library's malloc, which re-faults XLA's per-step buffers: training steps "
        f"on a CPU run slower than with jemalloc. To fix, {how}; VITSCALE_MALLOC=system silences this."
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    env = environment()
    exe = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    os.execve(exe, argv, env)


if __name__ == "__main__":
    main()
