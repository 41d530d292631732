"""Transfer: bad references fail before any compute with clear messages; a tiny transfer runs end to
end through papermill (parameter file → run folder with summary, fine-tuning curves and report)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

import browser
from vitscale import cli, config, runs, train
from vitscale.transfer import finetune, program


@pytest.fixture(scope="module")
def tiny_run(root, tmp_path_factory) -> Path:
    """A seconds-long pretraining run folder (tests/data/tiny_pretrain.yaml: Atto/7, 6 steps; evaluated
    once, on part of the test split)."""
    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    params = {**config.load_yaml(root / "tests/data/tiny_pretrain.yaml"), "test_split": "test[:512]", "eval_every": 6}
    train.run(config.validate(config.PretrainConfig, params), out)
    return out


@pytest.fixture
def params(root, tiny_run) -> dict:
    return {**config.load_yaml(root / "tests/data/tiny_transfer.yaml"), "pretrained": str(tiny_run)}


def _empty_dir(tmp: Path) -> str:
    (tmp / "not_a_run").mkdir()
    return str(tmp / "not_a_run")


def _no_checkpoint(tmp: Path) -> str:
    (tmp / "unfinished").mkdir()
    (tmp / "unfinished" / "params.yaml").write_text("variant: Atto/7\n")
    return str(tmp / "unfinished")


# (override, needles): `pretrained` may be a function of a temporary folder that builds the bad run folder.
CASES = {
    "missing_run": (
        dict(pretrained="/nonexistent/vitscale-run"),
        ["pretrained", "/nonexistent/vitscale-run", "does not exist", "'random'"],
    ),
    "no_params_yaml": (dict(pretrained=_empty_dir), ["pretrained", "not_a_run", "has no params.yaml"]),
    "no_checkpoint": (dict(pretrained=_no_checkpoint), ["pretrained", "unfinished", "has no checkpoint", "ckpt"]),
    "too_few_per_class": (
        dict(fewshot_shots=[1, 200]),
        ["fewshot_datasets", "sklearn_digits", "fewer than 200", "'train'", "{0: "],
    ),
    "shots_not_positive": (dict(fewshot_shots=[0, 5]), ["fewshot_shots", "positive", "[0, 5]"]),
    "unknown_fewshot_dataset": (
        dict(fewshot_datasets=["mnist_typo"]),
        ["fewshot_datasets", "mnist_typo", "mnist_5k", "sklearn_digits"],
    ),
    "unknown_finetune_dataset": (dict(finetune_datasets=["digits_typo"]), ["finetune_datasets", "digits_typo"]),
    "resolution_vs_patch": (dict(finetune_resolution=40), ["finetune_resolution: 40", "patch size 7", "Atto/7"]),
    "random_model_with_a_run": (
        dict(random_model={"variant": "Pico/7"}),
        ["random_model", "only used with pretrained"],
    ),
    "compare_random_with_random": (
        dict(pretrained="random", random_model={"variant": "Atto/7"}),
        ["compare_random", "false"],
    ),
    "bad_random_model": (
        dict(pretrained="random", compare_random=False, random_model={"variant": "Huge/3"}),
        ["random_model", "variant", "Huge/3", "Pico"],
    ),
    "unknown_parameter": (dict(shots=[1, 5]), ["shots", "unknown parameter", "fewshot_shots"]),
    "warmup_too_long": (dict(warmup_steps=10), ["warmup_steps: 10", "finetune_steps 4"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_references_fail_early_with_clear_messages(case, params, tmp_path):
    override, needles = CASES[case]
    override = {k: v(tmp_path) if callable(v) else v for k, v in override.items()}
    with pytest.raises(config.ConfigError) as e:  # the schema's own checks, then the ones that read files
        program.check(config.validate(config.TransferConfig, {**params, **override}))
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_batch_must_split_over_devices(params):
    cfg = config.validate(config.TransferConfig, {**params, "finetune_batch_size": 12})
    with pytest.raises(config.ConfigError, match="finetune_batch_size: 12 does not split over 8 devices"):
        program.check(cfg)


def test_the_cli_refuses_a_missing_run_before_any_compute(params, tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**params, "pretrained": str(tmp_path / "nowhere")}))
    out = tmp_path / "out"
    assert cli.main(["run", str(p), "--notebook", "transfer", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "does not exist" in err
    assert not out.exists()


def test_random_init_needs_no_run_folder(params):
    cfg = config.validate(
        config.TransferConfig,
        {
            **params,
            "pretrained": "random",
            "compare_random": False,
            "random_model": {"variant": "Atto/7", "image_size": 28},
        },
    )
    pre = program.check(cfg)
    assert pre.variant == "Atto/7" and finetune.resolution(cfg, pre) == 42


@pytest.mark.slow
def test_tiny_transfer_through_papermill(params, tmp_path):
    p = tmp_path / "tiny_transfer.yaml"
    p.write_text(yaml.safe_dump(params))
    out = tmp_path / "transfer"
    r = subprocess.run(
        [str(Path(sys.executable).parent / "vitscale"), "run", str(p), "--notebook", "transfer", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("run.ipynb", "run.html", "params.yaml", "summary.json"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    assert s["models"] == ["pretrained", "random"] and s["pretrained_step"] == 6
    assert (s["variant"], s["pretrain_image_size"], s["finetune_resolution"]) == ("Atto/7", 28, 42)
    for model in ("pretrained", "random"):
        few = s["fewshot"][model]["sklearn_digits"]
        assert list(few) == ["1shot", "5shot"] and len(few["5shot"]["per_seed"]) == 2
        assert few["5shot"]["mean"] == pytest.approx(sum(few["5shot"]["per_seed"]) / 2)
        ft = s["finetune"]["sklearn_digits"][model]
        assert [g["lr"] for g in ft["grid"]] == [0.01, 0.1] and ft["best_lr"] in (0.01, 0.1)
        assert (ft["train_images"], ft["holdout_images"], ft["test_images"]) == (1297, 26, 500)
        # Curves: the grid runs log held-out metrics, the final run test metrics, per step.
        runs_dir = out / "finetune" / "sklearn_digits" / model
        grid = runs.read_metrics(runs_dir / "lr_0.1" / "metrics.jsonl")
        assert [r["step"] for r in grid if "val/acc" in r] == [2, 4]
        assert [r["step"] for r in grid if "train/loss" in r] == [2, 4]
        final = runs.read_metrics(runs_dir / f"final_lr_{ft['best_lr']:g}" / "metrics.jsonl")
        assert final[-1]["step"] == 4 and final[-1]["test/acc"] == ft["test/acc"]
    assert s["final"]["fewshot/sklearn_digits/5shot"] == s["fewshot"]["pretrained"]["sklearn_digits"]["5shot"]["mean"]
    assert (
        s["final"]["random/finetune/sklearn_digits/test/acc"] == s["finetune"]["sklearn_digits"]["random"]["test/acc"]
    )
    nb = nbformat.read(out / "run.ipynb", as_version=4)
    assert nb.metadata.papermill.parameters["params"]["pretrained"] == params["pretrained"]
    html = (out / "run.html").read_text()
    assert len(re.findall(r'class="plotly-graph-div"', html)) >= 2  # few-shot plot, curves
    assert html.count('<table class="vs-table"') >= 2 + 4  # few-shot and fine-tuning, the parameter groups
    assert browser.remote_tags(html) == []
    assert "No fine-tuning in this run" not in html and "All parameters" in html
    assert "program.run(cfg, out_dir)" not in html
