"""The package as a researcher installs it (issue 38): the sdist and wheel build and pass `twine check`,
the wheel carries the notebooks, and installed into a fresh virtual environment it makes a study
folder and trains a run there, writing nothing into the environment.

The fresh environment gets vitscale from the wheel alone; its dependencies come from the project's
environment (a .pth line naming its site-packages, and Jupyter's data files through JUPYTER_PATH), so
the test needs no network."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import vitscale

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ["pyproject.toml", "README.md", "LICENSE", "CITATION.cff", "MANIFEST.in", "lib", "notebooks", "parameters"]
NOTEBOOKS = {"pretrain.ipynb", "transfer.ipynb", "scaling_analysis.ipynb"}


def sh(cmd: list[str], timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def build(tmp: Path) -> Path:
    """sdist and wheel (the wheel built from the sdist, as `python -m build` does) of a copy of the
    sources, so nothing is written into the checkout; `twine check` passes both."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    sh([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src], env=clean_env())
    sh([sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir())])
    return next(dist.glob("*.whl"))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would point a child at the checkout or a study elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VITSCALE_STUDY_DIR", "JUPYTER_PATH")}
    return {**env, **extra}


def fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new environment holding vitscale from `wheel`, its dependencies seen from this one."""
    venv = tmp / "venv"
    sh([sys.executable, "-m", "venv", "--without-pip", venv])
    site = next((venv / "lib").glob("python3.*/site-packages"))
    (site / "project_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after its own site-packages
    sh([sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "--no-deps", "--no-index", wheel])
    return venv


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.long
def test_a_wheel_installed_elsewhere_makes_a_study_and_trains_there(tmp_path):
    wheel = build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {Path(n).name for n in names if n.startswith("vitscale/template/notebooks/")} == NOTEBOOKS
    assert f"vitscale-{vitscale.__version__}.dist-info/licenses/LICENSE" in names
    assert "vitscale/template/parameters/pretrain/tiny.yaml" in names

    venv = fresh_venv(tmp_path, wheel)
    # Jupyter's data files (nbconvert's templates) from the project's environment, not its kernels.
    jupyter = tmp_path / "jupyter"
    jupyter.mkdir()
    (jupyter / "nbconvert").symlink_to(Path(sys.prefix, "share", "jupyter", "nbconvert"))
    env = clean_env(PATH=f"{venv / 'bin'}:{os.environ['PATH']}", JUPYTER_PATH=str(jupyter))
    where = sh(["python", "-c", "import vitscale; print(vitscale.__file__)"], env=env, cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout's
    sh(["vitscale", "kernel"], env=env)  # installing: the `vitscale` kernel of this environment
    before = files(venv)

    work = tmp_path / "empty"
    work.mkdir()
    sh(["vitscale", "init", "study"], env=env, cwd=work)
    r = sh(["vitscale", "run", "parameters/pretrain/tiny.yaml"], timeout=400, env=env, cwd=work / "study")
    run = work / "study" / "outputs" / "tiny"
    assert str(run / "run.html") in r.stdout
    assert (run / "run.html").stat().st_size > 0 and (run / "summary.json").is_file()
    executed = json.loads((run / "run.ipynb").read_text())["metadata"]["papermill"]["input_path"]
    assert Path(executed).is_relative_to(venv), executed  # the installed package's notebook
    assert sorted(p.name for p in (work / "study").iterdir()) == [
        "README.md",
        "notebooks",
        "outputs",
        "parameters",
        "vitscale.toml",
    ]
    assert files(venv) == before  # nothing written into the environment
