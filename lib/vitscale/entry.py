"""The `vitscale` command's entry point: the parameter or sweep file that `run` and `sweep` name is read
first, with the one safe loader (config.load_yaml: size, alias-expansion and duplicate-key caps), so a
hostile or broken file is refused in under a second and a few tens of MB, before the command line
(vitscale.cli) loads JAX, TensorFlow and papermill (about 1 GB and 10-30 s on 2 cores)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from vitscale import allocator, config

READS_A_FILE = ("run", "sweep")  # subcommands whose first argument is a YAML file


def precheck(argv: list[str]) -> list[str]:
    """The error lines of the file a `run` or `sweep` command names ([] when it reads or is not there:
    the command line then says what is missing, with the rest of its checks)."""
    if len(argv) < 2 or argv[0] not in READS_A_FILE or argv[1].startswith("-"):
        return []
    path = Path(argv[1])
    if not path.is_file():
        return []
    try:
        config.load_yaml(path)
    except config.ConfigError as e:
        return e.lines()
    return []


TRAINS_HERE = ("sweep",)  # subcommands that train in their own process (a sweep's groups of runs)


def main(argv: list[str] | None = None) -> int:
    """vitscale.cli.main, after `precheck` (argv None: the process's own arguments, as cli.main reads them).
    A command that trains here starts itself again with jemalloc first (vitscale.allocator), as the
    runs' kernels have it: with the C library's malloc a group trained at two thirds of the speed."""
    if lines := precheck(sys.argv[1:] if argv is None else argv):
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if argv is None and sys.argv[1:2] and sys.argv[1] in TRAINS_HERE:
        try:
            env = allocator.relaunch_environment()
        except ValueError as e:  # a bad VITSCALE_MALLOC
            print(f"error: {e}", file=sys.stderr)
            return 2
        if env is not None:
            os.execve(sys.executable, [sys.executable, "-m", "vitscale.entry", *sys.argv[1:]], env)
    # Imported here, not at the top: the point of this module is to run before the frameworks load.
    return importlib.import_module("vitscale.cli").main(argv)


if __name__ == "__main__":  # how `main` starts the command again (above)
    sys.exit(main())
