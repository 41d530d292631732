"""The `vitscale` command's entry point: the parameter or sweep file that `run` and `sweep` name is read
first, with the one safe loader (config.load_yaml: size, alias-expansion and duplicate-key caps), so a
hostile or broken file is refused in under a second and a few tens of MB, before the command line
(vitscale.cli) loads JAX, TensorFlow and papermill (about 1 GB and 10-30 s on 2 cores)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from vitscale import config

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


def main(argv: list[str] | None = None) -> int:
    """vitscale.cli.main, after `precheck` (argv None: the process's own arguments, as cli.main reads them)."""
    if lines := precheck(sys.argv[1:] if argv is None else argv):
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    # Imported here, not at the top: the point of this module is to run before the frameworks load.
    return importlib.import_module("vitscale.cli").main(argv)
