"""The study folder (issue 38): where runs go when vitscale runs outside its clone, what a parameter
file's `kind:` does, and `vitscale init`. Cheap: no training, no kernel."""

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from vitscale import cli, config, notebooks, runs, study, sweep

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "lib" / "vitscale" / "template"
TINY = dict(name="t", dataset="fashion_mnist", variant="Atto/7", total_steps=4, warmup_steps=1, batch_size=16)


@pytest.fixture(autouse=True)
def no_study_env(monkeypatch):
    monkeypatch.delenv(study.ENV, raising=False)


def tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` but hidden ones such as JupyterLab's
    .ipynb_checkpoints (the reference: plain os.walk)."""
    out = {}
    for dirpath, dirs, names in os.walk(folder, followlinks=True):  # the clone links the template to its files
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in (n for n in names if not n.startswith(".")):
            p = Path(dirpath, n)
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ----------------------------------------------------------------------------- finding the study folder
def test_the_study_is_the_nearest_folder_with_a_marker(tmp_path, monkeypatch):
    (tmp_path / "a" / "vitscale.toml").parent.mkdir()
    (tmp_path / "a" / "vitscale.toml").write_text("")
    (tmp_path / "a" / "notebooks" / "deep").mkdir(parents=True)
    (tmp_path / "b" / "parameters").mkdir(parents=True)
    (tmp_path / "b" / "notebooks").mkdir()
    (tmp_path / "plain" / "sub").mkdir(parents=True)
    assert study.root(tmp_path / "a" / "notebooks" / "deep") == tmp_path / "a"
    assert study.root(tmp_path / "b" / "notebooks") == tmp_path / "b"  # parameters/ marks it too
    assert study.root(tmp_path / "plain" / "sub") == tmp_path / "plain" / "sub"  # no marker: where it runs
    monkeypatch.chdir(tmp_path / "b" / "notebooks")
    assert study.outputs() == tmp_path / "b" / "outputs"
    monkeypatch.setenv(study.ENV, str(tmp_path / "plain"))  # the variable wins, wherever it runs
    assert study.outputs() == tmp_path / "plain" / "outputs"


def test_the_clone_is_a_study_folder(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")
    assert study.root() == ROOT and study.kernel_cwd(ROOT) == ROOT / "notebooks"
    assert study.notebook("pretrain").resolve() == (ROOT / "notebooks" / "pretrain.ipynb").resolve()


def test_run_outside_the_clone_claims_its_folder_under_that_folders_outputs(tmp_path, monkeypatch):
    """`vitscale run` from a study elsewhere: the run folder is <study>/outputs/<name>, the clone's
    outputs/ is untouched (checked up to the claim, before any compute)."""
    (tmp_path / "parameters" / "pretrain").mkdir(parents=True)
    (tmp_path / "parameters" / "pretrain" / "mine.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "parameters" / "sub").mkdir()
    before = tree(ROOT / "outputs")
    monkeypatch.chdir(tmp_path / "parameters" / "sub")  # anywhere below the study folder
    kind, _, out = notebooks.prepare_run(Path("../pretrain/mine.yaml"))
    runs.unlock(out)
    assert (kind, out) == ("pretrain", tmp_path / "outputs" / "mine")
    assert yaml.safe_load((out / "params.yaml").read_text())["variant"] == "Atto/7"
    assert tree(ROOT / "outputs") == before


def test_a_notebooks_kernel_in_the_studys_notebooks_finds_the_studys_outputs(tmp_path):
    """What a JupyterLab kernel (working directory: the study's notebooks/) resolves, in a process
    of its own: outputs/, and a run named relative to the study (the transfer demo's outputs/demo)."""
    assert study.init(tmp_path / "s")
    (tmp_path / "s" / "outputs" / "demo").mkdir(parents=True)
    code = "from vitscale import runs, study; print(study.outputs()); print(runs.locate('outputs/demo')[0])"
    env = {k: v for k, v in os.environ.items() if k != study.ENV}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "s" / "notebooks", env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "s" / "outputs"), str(tmp_path / "s" / "outputs" / "demo")]


def test_batch_runs_execute_the_packaged_notebook_in_the_studys_notebooks(tmp_path, monkeypatch):
    import papermill

    seen = {}

    def fake(notebook, output, cwd, **_):
        seen.update(notebook=Path(notebook), cwd=cwd, study=os.environ.get(study.ENV))

    monkeypatch.setattr(papermill, "execute_notebook", fake)
    monkeypatch.setattr(notebooks, "ensure_kernel", lambda: None)
    study.init(tmp_path / "s")
    monkeypatch.chdir(tmp_path / "s")
    notebooks.execute("pretrain", {}, tmp_path / "s" / "outputs" / "x")
    assert seen["notebook"] == TEMPLATE / "notebooks" / "pretrain.ipynb"  # the package's, not the study's copy
    assert (seen["cwd"], seen["study"]) == (str(tmp_path / "s" / "notebooks"), str(tmp_path / "s"))


# ----------------------------------------------------------------------------- vitscale init
def test_init_copies_the_starter_study(tmp_path, capsys):
    assert cli.main(["init", str(tmp_path / "s")]) == 0
    assert "vitscale run parameters/pretrain/tiny.yaml" in capsys.readouterr().out
    made = tree(tmp_path / "s")
    assert made == tree(TEMPLATE)
    for name in ("pretrain", "transfer", "scaling_analysis"):  # the clone's notebooks are these very files
        assert made[f"notebooks/{name}.ipynb"] == tree(ROOT / "notebooks")[f"{name}.ipynb"]
    for rel in ("pretrain/demo.yaml", "transfer/demo.yaml", "sweeps/cpu_scaling_slice.yaml"):
        assert made[f"parameters/{rel}"] == hashlib.sha256((ROOT / "parameters" / rel).read_bytes()).hexdigest()
    assert tomllib.loads((tmp_path / "s" / "vitscale.toml").read_text()) == {}  # a marker, valid TOML
    assert [r.run_id for r in sweep.load(tmp_path / "s/parameters/sweeps/cpu_scaling_slice.yaml").runs] == [
        r.run_id for r in sweep.load(ROOT / "parameters/sweeps/cpu_scaling_slice.yaml").runs
    ]


def test_init_refuses_a_clash_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "s"
    (folder / "parameters" / "transfer").mkdir(parents=True)
    (folder / "parameters" / "transfer" / "demo.yaml").write_text("mine\n")
    (folder / "notes.md").write_text("a draft\n")
    before = tree(folder)
    assert cli.main(["init", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {folder}: init: parameters/transfer/demo.yaml exists"), err
    assert tree(folder) == before
    (folder / "parameters" / "transfer" / "demo.yaml").unlink()  # a non-empty folder without a clash is fine
    assert cli.main(["init", str(folder)]) == 0
    assert (folder / "notes.md").read_text() == "a draft\n"


# ----------------------------------------------------------------------------- a parameter file's kind
def test_kind_says_what_a_file_is_and_leaves_the_parameters_as_they_were(tmp_path, monkeypatch):
    """A `kind:` file anywhere runs like the same file under parameters/<kind>/ without one: same
    resolved parameters (params.yaml), same sweep run ids."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parameters" / "pretrain").mkdir(parents=True)
    (tmp_path / "parameters" / "pretrain" / "a.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"kind": "pretrain", **TINY}))
    outs = [notebooks.prepare_run(Path(p))[2] for p in ("parameters/pretrain/a.yaml", "b.yaml")]
    for out in outs:
        runs.unlock(out)
    assert outs == [tmp_path / "outputs" / "a", tmp_path / "outputs" / "b"]
    assert (outs[0] / "params.yaml").read_text() == (outs[1] / "params.yaml").read_text()
    slice_ = yaml.safe_load((ROOT / "parameters/sweeps/cpu_scaling_slice.yaml").read_text())
    full = yaml.safe_load((ROOT / "parameters/sweeps/cpu_scaling.yaml").read_text())
    (tmp_path / "cpu_scaling.yaml").write_text(yaml.safe_dump({"kind": "sweep", **full}, sort_keys=False))
    (tmp_path / "slice.yaml").write_text(yaml.safe_dump({"kind": "sweep", **slice_}, sort_keys=False))
    ids = [r.run_id for r in sweep.load(tmp_path / "slice.yaml").runs]
    assert ids == [r.run_id for r in sweep.load(ROOT / "parameters/sweeps/cpu_scaling_slice.yaml").runs]


@pytest.mark.parametrize(
    "argv, content, message",
    [
        (["run"], {"kind": "finetune", **TINY}, "'finetune' is not a kind (accepted kinds: pretrain, transfer, sweep)"),
        (["run"], TINY, "cannot tell what the file is: add a `kind:` line, or put it under parameters/<kind>/"),
        (["run"], {"kind": "sweep", "grid": {}}, "'sweep' files run with `vitscale sweep"),
        (["run", "--notebook", "transfer"], {"kind": "pretrain", **TINY}, "is a 'pretrain' file, not 'transfer'"),
        (["sweep"], {"kind": "pretrain", **TINY}, "is a 'pretrain' file, not 'sweep'"),
    ],
    ids=["unknown", "none outside parameters/", "sweep to run", "disagrees with --notebook", "run file to sweep"],
)
def test_a_kind_that_does_not_fit_is_one_line_and_nothing_written(
    tmp_path, monkeypatch, capsys, argv, content, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(content))
    assert cli.main([argv[0], "p.yaml", *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: p.yaml: kind: ") and message in err[0], err
    assert "kinds pretrain, transfer" in err[0] or "kinds: pretrain, transfer, sweep" in err[0]  # what is accepted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]


def test_lab_without_notebooks_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["lab"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notebooks: no such folder; `vitscale init DIR`" in err[0]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- packaging, read from the files
def test_one_version_a_license_and_a_citation():
    import vitscale

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "vitscale.__version__"}
    assert vitscale.__version__.count(".") == 2
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert meta["project"]["license"] == "Apache-2.0"
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "Apache-2.0"
    paper = cff["references"][0]
    assert paper["title"] == "Scaling Vision Transformers" and paper["year"] == 2022
    assert [a["family-names"] for a in paper["authors"]] == ["Zhai", "Kolesnikov", "Houlsby", "Beyer"]


def test_kind_is_not_a_schema_field():
    """`kind` is removed before validation; if a schema ever grew a field of that name, files would mean two things."""
    assert all("kind" not in schema.model_fields for schema in config.KINDS.values())
