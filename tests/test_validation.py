"""Every bad parameter file stops before any compute: one `error: <file>: <field>: ...` line per
problem, exit code 2, no traceback, and nothing written (the outputs folder byte-identical)."""

import hashlib
import json
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from vitscale import cli

PRETRAIN = dict(name="t", variant="Atto/7", total_steps=4, warmup_steps=1, batch_size=16, eval_every=2)
TRANSFER = dict(
    pretrained="random",
    random_model={"variant": "Atto/7"},
    fewshot_datasets=["sklearn_digits"],
    fewshot_shots=[1, 5],
    finetune_datasets=[],
)


def yaml_text(params: dict) -> bytes:
    return yaml.safe_dump(params).encode()


# case: (notebook kind, file bytes, fields that must be named). One per class of the issue, then
# classes that were already caught.
CASES = {
    "nan": ("pretrain", yaml_text(PRETRAIN).replace(b"name: t", b"name: t\nlr: .nan"), ["lr"]),
    "infinity": ("pretrain", yaml_text({**PRETRAIN, "weight_decay": float("inf")}), ["weight_decay"]),
    "subset_larger_than_split": ("pretrain", yaml_text({**PRETRAIN, "train_examples": 70_000}), ["train_examples"]),
    "shots_above_a_class_in_pretraining": (
        "pretrain",
        yaml_text({**PRETRAIN, "fewshot_datasets": ["sklearn_digits"], "fewshot_shots": [1, 200]}),
        ["fewshot_datasets"],
    ),
    "mesh_vs_devices": ("pretrain", yaml_text({**PRETRAIN, "mesh": [3, 1]}), ["mesh"]),
    "regex_does_not_compile": ("pretrain", yaml_text({**PRETRAIN, "wd_rules": [["head/(", 3.0]]}), ["wd_rules"]),
    "yaml_syntax": ("pretrain", b"name: t\nlr: [1e-3, 2\nvariant: Atto/7\n", ["line 3, column"]),
    "yaml_tag": ("pretrain", b"name: t\nlr: !!python/object/apply:os.system ['true']\n", ["line 2, column"]),
    "not_utf8": ("pretrain", b"name: caf\xe9\n", ["file"]),
    "several_at_once": (
        "pretrain",
        yaml_text({**PRETRAIN, "lr": -1, "pool_type": "max", "bogus": 1}),
        ["lr", "pool_type", "bogus"],
    ),
    "transfer_nan": ("transfer", yaml_text({**TRANSFER, "fewshot_l2": float("nan")}), ["fewshot_l2"]),
    "transfer_shots_above_a_class": ("transfer", yaml_text({**TRANSFER, "fewshot_shots": [500]}), ["fewshot_datasets"]),
    "unknown_dataset": ("pretrain", yaml_text({**PRETRAIN, "dataset": "imagenet_typo"}), ["dataset"]),
    "batch_vs_devices": ("pretrain", yaml_text({**PRETRAIN, "batch_size": 12}), ["batch_size"]),
}


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def outputs(tmp_path) -> Path:
    """An outputs folder holding an earlier run, which bad input must leave exactly as it is."""
    out = tmp_path / "outputs"
    (out / "earlier").mkdir(parents=True)
    (out / "earlier" / "params.yaml").write_text(yaml.safe_dump(PRETRAIN))
    (out / "earlier" / "metrics.jsonl").write_text('{"step": 2}\n')
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_exits_2_naming_the_field_and_writes_nothing(case, tmp_path, outputs, capsys):
    kind, text, fields = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(text)
    before = snapshot(outputs)
    code = cli.main(["run", str(path), "--notebook", kind, "--out", str(outputs / case)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"error: {path}: ") for line in lines), err
    for field in fields:
        assert any(line.startswith(f"error: {path}: {field}") for line in lines), (field, err)
    assert "Traceback" not in err
    assert snapshot(outputs) == before and not (outputs / case).exists()


def test_a_sweep_checks_every_run_before_the_first_starts(tmp_path, outputs, capsys):
    spec = {"base": PRETRAIN, "grid": {"train_examples": [100, 70_000], "lr": [1e-3, float("nan")]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    before = snapshot(outputs)
    assert cli.main(["sweep", str(path), "--out", str(outputs / "sweep")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"error: {path}: run ") for line in lines), err  # 3 bad runs
    assert sum(": lr:" in line for line in lines) == 2 and sum(": train_examples:" in line for line in lines) == 1
    assert snapshot(outputs) == before and not (outputs / "sweep").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override,field", [({"train_examples": 70_000}, "train_examples")])  # a check, not the schema
def test_the_notebook_fails_in_its_first_code_cell_with_the_same_message(root, tmp_path, override, field):
    out = tmp_path / "nb.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(
            str(root / "notebooks/pretrain.ipynb"),
            str(out),
            parameters={"params": {**PRETRAIN, **override}, "out_dir": str(tmp_path / "run")},
            kernel_name="vitscale",
            cwd=str(root / "notebooks"),
            progress_bar=False,
        )
    assert e.value.ename == "ConfigError" and f"{field}: " in e.value.evalue
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    failed = [c for c in code if any(o.get("output_type") == "error" for o in c.outputs)]
    assert failed == [code[1]], "the cell after the parameters cell fails"  # code[0] is the parameters cell
    shown = "\n".join(failed[0].outputs[-1]["traceback"])
    assert f"{field}: " in shown and "Traceback" not in shown and "File " not in shown  # problems, not a traceback
    assert not (tmp_path / "run").exists()
    assert json.loads(json.dumps(nb.metadata.papermill.parameters))["params"][field] == override[field]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["pretrain", "transfer"])
def test_checked_once_per_process_boundary(kind, monkeypatch, tmp_path):
    """notebooks.check runs the program's check once; run(cfg, checked=True), as the notebook calls it
    next, does not check again; a batch kernel told `checked` validates only; run(cfg) alone checks."""
    from vitscale import notebooks, runs

    program = notebooks.PROGRAMS[kind]
    calls = []
    monkeypatch.setattr(program, "check", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(runs, "claim", lambda *a, **k: (_ for _ in ()).throw(_Stop()))  # stop before compute
    params = PRETRAIN if kind == "pretrain" else TRANSFER
    cfg = notebooks.check(kind, params)
    assert len(calls) == 1
    with pytest.raises(_Stop):
        program.run(cfg, tmp_path / "out", checked=True)
    assert len(calls) == 1  # run did not check again
    notebooks.check(kind, params, checked=True)
    assert len(calls) == 1
    with pytest.raises(_Stop):
        program.run(cfg, tmp_path / "out")  # a library call without the word of a check: it checks
    assert len(calls) == 2


# A transfer from a weights file whose model (config.ModelSpec) is wrong: pydantic names the nested field.
NPZ_TRANSFER = {**{k: v for k, v in TRANSFER.items() if k != "random_model"}, "pretrained": "weights.npz"}


@pytest.mark.parametrize(
    "model,field,needles",
    [
        ({"variant": "X/3"}, "pretrained_model.variant", ["X/3", "NAME/PATCH", "B/16"]),
        ({"variant": "B/16", "widht": 768}, "pretrained_model.widht", ["unknown parameter", "accepted:", "width"]),
        ({"variant": "B/16", "image_size": 30}, "pretrained_model.image_size", ["patch size 16"]),
        ({"image_size": 224}, "pretrained_model.variant", ["is needed to read 'weights.npz'"]),
    ],
)
def test_a_bad_nested_model_is_one_line_naming_its_field(model, field, needles, tmp_path, outputs, capsys):
    path = tmp_path / "transfer.yaml"
    path.write_text(yaml.safe_dump({**NPZ_TRANSFER, "pretrained_model": model}))
    before = snapshot(outputs)
    code = cli.main(["run", str(path), "--notebook", "transfer", "--out", str(outputs / "bad")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {field}: "), err
    assert all(n in lines[0] for n in needles), err
    assert snapshot(outputs) == before and not (outputs / "bad").exists()


@pytest.mark.parametrize("name", ["pretrain", "transfer_run", "transfer_random", "transfer_npz"])
def test_params_yaml_from_before_the_model_schema_still_resumes(root, name, tmp_path):
    """tests/data/params_before_model_spec holds params.yaml files as written before config.ModelSpec
    (flat model keys; `random_model: {}` for none): each loads, and claiming its folder with the same
    parameters accepts the run and leaves the file as it was."""
    from vitscale import config, runs

    old = root / "tests/data/params_before_model_spec" / f"{name}.yaml"
    schema = config.PretrainConfig if name == "pretrain" else config.TransferConfig
    params = config.load_yaml(old)
    cfg = config.validate(schema, params)
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.yaml").write_bytes(old.read_bytes())
    runs.claim(run, cfg)  # raises ConfigError naming the differing fields if the run were not the same
    assert (run / "params.yaml").read_bytes() == old.read_bytes()
    if name == "pretrain":
        assert (cfg.variant, cfg.pool_type, cfg.shape.width, cfg.shape.patch_size) == ("Atto/7", "tok", 32, 7)
    else:
        model = {"transfer_run": None, "transfer_random": "Atto/7", "transfer_npz": "B/16"}[name]
        given = cfg.random_model or cfg.pretrained_model
        assert (given and given.variant) == model
        assert params["random_model"] == {} or params["pretrained_model"] == {}  # the old spelling of "not given"


def test_a_kernel_that_never_started_is_started_again_a_failed_cell_is_not(monkeypatch, tmp_path, capsys):
    """Side-by-side kernels sometimes die before their first reply (jupyter_client's RuntimeError); no cell
    ran, so notebooks.execute starts another, up to KERNEL_START_TRIES; any other failure is raised at once."""
    from vitscale import notebooks

    def fake(errors):
        calls = []

        def execute_notebook(*args, **kwargs):
            calls.append(kwargs["parameters"])
            if len(calls) <= len(errors):
                raise errors[len(calls) - 1]

        monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
        return calls

    died = RuntimeError("Kernel died before replying to kernel_info")
    calls = fake([died])
    notebooks.execute("pretrain", {"name": "x"}, tmp_path / "a", quiet=True)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert "the kernel did not start" in capsys.readouterr().err

    calls = fake([RuntimeError("a cell failed")])
    with pytest.raises(RuntimeError, match="a cell failed"):
        notebooks.execute("pretrain", {"name": "x"}, tmp_path / "b", quiet=True)
    assert len(calls) == 1

    calls = fake([died] * notebooks.KERNEL_START_TRIES)
    with pytest.raises(RuntimeError, match="Kernel died"):
        notebooks.execute("pretrain", {"name": "x"}, tmp_path / "c", quiet=True)
    assert len(calls) == notebooks.KERNEL_START_TRIES
