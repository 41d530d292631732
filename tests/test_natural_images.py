"""Natural images of varying sizes, end to end through the streaming path: a folder of class
folders is prepared once, then pretraining (inception_crop + flip), few-shot evaluation and
fine-tuning all read it example by example."""

import json

import pytest

from natural_images import write_folder
from vitscale import config, train
from vitscale.report import downstream, page
from vitscale.transfer import program

PP_TRAIN = ["decode", "inception_crop(32)", "flip_lr", "value_range(-1, 1)"]
PP_EVAL = ["decode", "resize_small(36)", "central_crop(32)", "value_range(-1, 1)"]


@pytest.mark.slow
def test_pretrain_fewshot_and_finetune_on_a_folder_of_photos(tmp_path):
    root = write_folder(tmp_path / "images", per_class=10, corrupt=True)
    name, data_dir = f"folder:{root}", str(tmp_path / "tfds")
    pre = config.validate(
        config.PretrainConfig,
        dict(
            name="photos",
            dataset=name,
            data_dir=data_dir,
            input="stream",
            image_size=32,
            channels=3,
            pp_train=PP_TRAIN,
            pp_eval=PP_EVAL,
            variant="Atto/8",
            total_steps=6,
            batch_size=16,
            warmup_steps=2,
            eval_every=6,
            log_every=2,
            eval_batch_size=16,
            fewshot_datasets=[name],
            fewshot_shots=[1, 2],
            fewshot_seeds=1,
        ),
    )
    with pytest.warns(UserWarning, match="broken.jpg"):
        summary = train.run(pre, tmp_path / "pre")
    assert summary["input"] == {"train": "stream", "test": "stream", "skipped_files": 1}
    assert summary["train_examples"] == 99
    assert 0 <= summary["final"]["test/acc"] <= 1
    assert "fewshot/folder_images/2shot" in summary["final"]

    cfg = config.validate(
        config.TransferConfig,
        dict(
            pretrained=str(tmp_path / "pre"),
            data_dir=data_dir,
            fewshot_datasets=[name],
            fewshot_shots=[1, 2],
            fewshot_seeds=1,
            finetune_datasets=[name],
            finetune_steps=4,
            finetune_batch_size=16,
            pp_finetune=PP_TRAIN,
            pp_finetune_eval=PP_EVAL,
            lr_grid=[0.01],
            holdout_fraction=0.1,
            warmup_steps=1,
            eval_every=4,
            log_every=2,
            eval_batch_size=16,
        ),
    )
    out = program.run(cfg, tmp_path / "transfer")
    saved = json.loads((tmp_path / "transfer" / "summary.json").read_text())
    assert saved["final"] == out["final"]
    assert "fewshot/folder_images/1shot" in out["final"], out["final"]
    assert 0 <= out["final"]["finetune/folder_images/test/acc"] <= 1
    # Issue 25.4: the folder's safe token (as in the metric names) names its fine-tuning folder, its
    # summary entries and its labels, and the report's fine-tuning section finds the curves run wrote.
    assert out["datasets"]["folder_images"] == name
    assert (tmp_path / "transfer" / "finetune" / "folder_images" / "pretrained").is_dir()
    table = str(downstream.finetune_table(out))
    curves = downstream.finetune_curves(program.load_curves(tmp_path / "transfer"))
    assert not isinstance(curves, page.Sentence), curves
    assert "<td>folder_images</td>" in table and "folder:" not in table
    assert [c["dataset"] for c in program.load_curves(tmp_path / "transfer")] == ["folder_images"] * 2
    fine = out["finetune"]["folder_images"]["pretrained"]
    assert (fine["train_images"], fine["holdout_images"], fine["test_images"]) == (99, 10, 11)
    assert fine["resolution"] == 32
