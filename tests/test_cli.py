"""Bad input fails before any compute, names the field and what is accepted, and leaves existing
outputs untouched."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitscale import cli, notebooks, study

GOOD = dict(
    name="t", dataset="fashion_mnist", variant="Atto/7", total_steps=4, warmup_steps=1, batch_size=16, eval_every=2
)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def existing_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "params.yaml").write_text(yaml.safe_dump(GOOD))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    return out


CASES = [
    (dict(bach_size=32), ["bach_size", "unknown parameter", "batch_size"]),
    (dict(total_steps="many"), ["total_steps", "integer", "many"]),
    (dict(dataset="imagenet_typo"), ["dataset", "imagenet_typo", "fashion_mnist"]),
    (dict(variant="Huge/16"), ["variant", "Huge/16", "Ti", "B"]),
    (dict(variant="Atto/5"), ["image_size: 28", "patch size 5"]),
    (dict(width=33), ["width 33", "num_heads 2"]),
    (dict(batch_size=12), ["batch_size: 12", "8 devices", "multiple of 8"]),
    (dict(optimizer="adamax"), ["optimizer", "adamax", "adafactor"]),
    (dict(pool_type="max"), ["pool_type", "gap", "map"]),
]


@pytest.mark.parametrize(
    "override,needles", CASES, ids=[next(iter(c[0])) + "=" + str(next(iter(c[0].values()))) for c in CASES]
)
def test_bad_input_fails_early_with_a_clear_message(override, needles, tmp_path, existing_run, capsys):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({**GOOD, **override}))
    before = snapshot(existing_run)
    code = cli.main(["run", str(params), "--notebook", "pretrain", "--out", str(existing_run)])
    err = capsys.readouterr().err
    assert code == 2
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(existing_run) == before


def test_existing_run_with_other_parameters_is_refused(tmp_path, existing_run, capsys):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({**GOOD, "total_steps": 8}))
    before = snapshot(existing_run)
    assert cli.main(["run", str(params), "--notebook", "pretrain", "--out", str(existing_run)]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other parameters (differing: total_steps)" in err and "--replace" in err
    assert snapshot(existing_run) == before


def test_missing_parameter_file_and_unknown_kind(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.yaml"), "--notebook", "pretrain"]) == 2
    assert "does not exist" in capsys.readouterr().err
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(GOOD))
    assert cli.main(["run", str(params)]) == 2
    assert "cannot tell what the file is" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_exits_nonzero(tmp_path, existing_run):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({**GOOD, "lr": -1}))
    before = snapshot(existing_run)
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "vitscale"),
            "run",
            str(params),
            "--notebook",
            "pretrain",
            "--out",
            str(existing_run),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert "lr" in r.stderr and "greater than 0" in r.stderr
    assert snapshot(existing_run) == before


def test_compile_cache_defaults_to_outputs_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(study.ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no study marker here or above: the working directory is the study
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    env = notebooks.compile_cache_env()
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path.resolve() / "outputs" / ".jax_cache")
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ  # for the kernels, not this process
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # the user's choice (here: off) is kept
    assert "JAX_COMPILATION_CACHE_DIR" not in notebooks.compile_cache_env(tmp_path)
