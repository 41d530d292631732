"""A run's weights out and back in: `vitscale export` writes a big_vision .npz; a transfer run reading
it reproduces the run folder's few-shot numbers exactly; a pretraining run starts from it
(`init_from`); a file that does not fit the model is refused before any compute."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from vitscale import build, cli, config, export, pretrained, sharding, train
from vitscale.transfer import program

pytestmark = pytest.mark.slow  # trains and exports runs (train.run starts git for the summary)


@pytest.fixture(scope="module")
def tiny_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "tiny"
    params = {
        **config.load_yaml(root / "tests/data/tiny_pretrain.yaml"),
        "test_split": "test[:512]",
        "eval_every": 6,
        "pool_type": "tok",
        "scan": True,
    }
    train.run(config.validate(config.PretrainConfig, params), out)
    return out


@pytest.fixture(scope="module")
def exported(tiny_run):
    assert cli.main(["export", str(tiny_run)]) == 0
    return tiny_run / "export" / "big_vision_step6.npz"


def transfer_params(root, **kw) -> dict:
    return {**config.load_yaml(root / "tests/data/tiny_transfer.yaml"), "finetune_datasets": [], **kw}


def test_export_writes_big_vision_names_and_the_lines_to_read_it(exported):
    lines = yaml.safe_load(exported.with_suffix(".yaml").read_text())
    assert lines["pretrained"] == str(exported)
    assert lines["pretrained_model"] == {"variant": "Atto/7", "pool_type": "tok", "scan": True}
    assert lines["exported_from"]["step"] == 6
    keys = set(pretrained.read_shapes(exported))
    assert {"cls", "pos_embedding", "Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"} <= keys
    assert not any("Attention/qkv" in k for k in keys)


def test_a_round_trip_reproduces_the_few_shot_numbers_exactly(root, tiny_run, exported, tmp_path):
    lines = yaml.safe_load(exported.with_suffix(".yaml").read_text())
    from_run = program.run(
        config.validate(config.TransferConfig, transfer_params(root, pretrained=str(tiny_run), compare_random=False)),
        tmp_path / "from_run",
    )
    from_file = program.run(
        config.validate(
            config.TransferConfig,
            transfer_params(
                root,
                compare_random=False,
                pretrained=lines["pretrained"],
                **{"pretrained_model": lines["pretrained_model"]},
            ),
        ),
        tmp_path / "from_file",
    )
    assert from_file["fewshot"] == from_run["fewshot"]
    assert from_file["final"] == from_run["final"]
    assert from_file["weights"] | {"file": None} == {
        "file": None,
        "variant": "Atto/7",
        "layout": "big_vision",
        "prefix": "",
        "scanned": True,
        "num_classes": 10,
    }
    assert from_run["weights"]["layout"].startswith("vitscale run folder")


def test_init_from_starts_a_pretraining_run_from_the_file(root, tiny_run, exported, tmp_path):
    base = {**config.load_yaml(root / "tests/data/tiny_pretrain.yaml"), "pool_type": "tok"}
    # unscanned and with another class count: blocks unstacked, the head a fresh one
    cfg = config.validate(config.PretrainConfig, {**base, "init_from": str(exported), "dataset": "sklearn_digits"})
    train.check(cfg)
    trainer = build.trainer(cfg, sharding.make_mesh([-1, 1]), 10)
    state, _ = pretrained.start_from_file(cfg, trainer)
    flat = pretrained.flatten(jax.device_get(state.params))
    with np.load(exported) as f:
        np.testing.assert_array_equal(flat["cls"], f["cls"])
        np.testing.assert_array_equal(
            flat["Transformer/encoderblock_1/MlpBlock/Dense_0/kernel"],
            f["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"][1],
        )
    assert int(state.step) == 0


def test_a_file_that_does_not_fit_is_refused_before_any_compute(root, exported, tmp_path, capsys):
    bad = {**config.load_yaml(root / "tests/data/tiny_pretrain.yaml"), "variant": "Femto/7", "init_from": str(exported)}
    with pytest.raises(config.ConfigError) as e:
        train.check(config.validate(config.PretrainConfig, bad))
    text = str(e.value)
    assert "init_from: a big_vision file (scanned)" in text and "does not fit variant 'Femto/7'" in text
    assert "init_from: embedding/kernel: file [7, 7, 1, " in text and "vs model [7, 7, 1, " in text
    assert "init_from: cls: [1, 1, " in text and "not in the model (does the model need pool_type: tok?)" in text
    params = transfer_params(root, pretrained=str(exported), pretrained_model={"variant": "Femto/7"})
    path = tmp_path / "bad_transfer.yaml"
    path.write_text(yaml.safe_dump(params))
    assert cli.main(["run", str(path), "--notebook", "transfer", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "pretrained: cls: [1, 1, " in err and "pretrained: Transformer/encoderblock/LayerNorm_0/scale: file [" in err
    assert not (tmp_path / "never").exists()
    with pytest.raises(config.ConfigError, match="pretrained_model.variant: is needed"):
        config.validate(config.TransferConfig, transfer_params(root, pretrained=str(exported)))
    with pytest.raises(config.ConfigError, match="vision_transformer has no MAP head"):
        export.check(config.PretrainConfig(pool_type="map"), "vision_transformer")


def test_export_needs_no_dataset_after_the_run(tmp_path):
    """The class count comes from the checkpoint's head: the run's images and prepared dataset moved away."""
    from natural_images import write_folder

    images = write_folder(tmp_path / "images", per_class=4, classes=3, photo_class=False)
    params = dict(
        name="moved",
        dataset=f"folder:{images}",
        data_dir=str(tmp_path / "tfds"),
        variant="Atto/7",
        channels=3,
        total_steps=2,
        batch_size=8,
        warmup_steps=1,
        eval_every=2,
        log_every=1,
        eval_batch_size=8,
    )
    run = tmp_path / "run"
    train.run(config.validate(config.PretrainConfig, params), run)
    (tmp_path / "images").rename(tmp_path / "images.moved")
    (tmp_path / "tfds").rename(tmp_path / "tfds.moved")
    # A fresh process, as `vitscale export` runs: nothing of the dataset cached from the training above.
    vitscale = str(Path(sys.executable).parent / "vitscale")
    r = subprocess.run([vitscale, "export", str(run)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    shapes = pretrained.read_shapes(run / "export" / "big_vision_step2.npz")
    assert shapes["head/kernel"] == (32, 3) and shapes["head/bias"] == (3,)  # 3 class folders, Atto width 32
