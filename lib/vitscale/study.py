"""The study folder: where a study's runs go, what its parameter files are, and `vitscale init`.

A study folder is a researcher's own project (parameter files, results, a paper draft), not the
package's source: it is the nearest folder at or above the working directory that holds a marker
(`vitscale.toml`, which `vitscale init` writes, or a `parameters/` folder), else the working
directory itself, as git finds its repository. `VITSCALE_STUDY_DIR` names it outright. Runs go to
its `outputs/` unless `--out` says otherwise; a clone of this repository is a study folder too (it
has `parameters/`). The notebooks and the starter parameter files ship inside the package
(`vitscale/template/`, read with `importlib.resources`); the clone's `notebooks/` links to them.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from vitscale import config

ENV = "VITSCALE_STUDY_DIR"  # names the study folder, wherever the process runs
MARKER = "vitscale.toml"
# A parameter file's kind, and the folder under parameters/ that says it when the file does not.
KINDS = ("pretrain", "transfer", "sweep")
FOLDERS = {"pretrain": "pretrain", "transfer": "transfer", "sweeps": "sweep"}
HOW = "`vitscale run FILE` runs pretrain and transfer files, `vitscale sweep FILE` sweeps"


def root(start: str | Path | None = None) -> Path:
    """The study folder: `VITSCALE_STUDY_DIR` if set, else the nearest folder at or above `start`
    (the working directory) holding `vitscale.toml` or `parameters/`, else `start` itself."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_file() or (folder / "parameters").is_dir():
            return folder
    return here


def outputs(start: str | Path | None = None) -> Path:
    """The study's `outputs/`: where runs and sweeps go by default."""
    return root(start) / "outputs"


def notebooks_dir(start: str | Path | None = None) -> Path:
    """The study's `notebooks/` (JupyterLab's folder, the batch kernels' working directory)."""
    return root(start) / "notebooks"


def kernel_cwd(study: Path) -> Path:
    """Where a batch kernel runs: the study's `notebooks/`, as a JupyterLab kernel does, or the
    study folder when it has none (relative paths in notebooks mean the same in both)."""
    return study / "notebooks" if (study / "notebooks").is_dir() else study


# ----------------------------------------------------------------------------- what ships in the package
def template() -> Traversable:
    """The package's starter study: notebooks/, parameters/, README.md, vitscale.toml."""
    return resources.files("vitscale") / "template"


def notebook(kind: str) -> Path:
    """The packaged notebook of `kind` (a file on disk: the package is installed unzipped)."""
    return Path(str(template() / "notebooks" / f"{kind}.ipynb"))


def _files(node: Traversable, prefix: Path = Path()) -> dict[Path, Traversable]:
    """{relative path: file} of every file under `node`, in a stable order."""
    out = {}
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__" or child.name.startswith("."):  # e.g. JupyterLab's .ipynb_checkpoints
            continue
        if child.is_dir():
            out.update(_files(child, prefix / child.name))
        else:
            out[prefix / child.name] = child
    return out


def init(folder: str | Path) -> list[Path]:
    """Make `folder` a study folder from the template: every file is checked before any is written,
    and an existing one is never overwritten (ConfigError naming it). The files written."""
    folder = Path(folder)
    files = _files(template())
    if folder.exists() and not folder.is_dir():
        raise config.ConfigError([config.Problem("folder", "exists and is not a folder")], folder)
    clash = next((rel for rel in files if (folder / rel).exists() or (folder / rel).is_symlink()), None)
    if clash is not None:
        raise config.ConfigError(
            [config.Problem("init", f"{clash} exists; nothing was written (vitscale init never overwrites a file)")],
            folder,
        )
    written = []
    for rel, source in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(source.read_bytes())
        written.append(folder / rel)
    return written


# ----------------------------------------------------------------------------- what a parameter file is
def file_kind(path: str | Path, params: dict[str, Any], given: str | None = None) -> tuple[str, dict[str, Any]]:
    """(kind, the parameters without the `kind:` key) of a parameter file: its `kind:` key, else
    `given` (the command line's choice), else its folder (parameters/<kind>/; sweeps/ holds sweeps).
    Raises ConfigError naming the accepted kinds when none of them says, or they disagree."""
    params = dict(params)
    key = params.pop("kind", None)
    accepted = f"accepted kinds: {', '.join(KINDS)}"
    if key is not None and key not in KINDS:
        raise config.ConfigError([config.Problem("kind", f"{key!r} is not a kind ({accepted})")], path)
    if key is not None and given is not None and key != given:
        raise config.ConfigError(
            [config.Problem("kind", f"the file is a {key!r} file, not {given!r} ({HOW}; {accepted})")], path
        )
    kind = key or given or FOLDERS.get(Path(path).parent.name)
    if kind is None:
        raise config.ConfigError(
            [
                config.Problem(
                    "kind",
                    f"cannot tell what the file is: add a `kind:` line, or put it under parameters/<kind>/ "
                    f"({accepted}; sweeps/ holds sweeps)",
                )
            ],
            path,
        )
    return kind, params
