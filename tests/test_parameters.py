"""Every committed parameter file builds its schema (the paper-scale ones cannot run here, so this
is their test); the folder and paper setups use the streaming path and the op lists."""

from pathlib import Path

import pytest

from vitscale import config, study

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "parameters").glob("*/*.yaml"))
SCHEMAS = {"pretrain": config.PretrainConfig, "transfer": config.TransferConfig}


@pytest.mark.parametrize("path", [p for p in FILES if p.parent.name in SCHEMAS], ids=lambda p: p.name)
def test_parameter_files_validate(path):
    kind, params = study.file_kind(path, config.load_yaml(path))  # a `kind:` line is not a parameter
    assert kind == path.parent.name
    config.validate(SCHEMAS[kind], params, path)


def test_the_scale_setups_stream_with_inception_crops():
    b16 = config.validate(config.PretrainConfig, config.load_yaml(ROOT / "parameters/pretrain/b16_imagenet21k.yaml"))
    assert (b16.variant, b16.image_size, b16.batch_size, b16.optimizer) == ("B/16", 224, 4096, "adafactor")
    assert b16.input == "stream" and b16.pp_train[0] == "decode_jpeg_and_inception_crop(224)"
    mine = config.validate(config.PretrainConfig, config.load_yaml(ROOT / "parameters/pretrain/my_images.yaml"))
    assert mine.dataset.startswith("folder:")
    for name in ("b16_imagenet21k", "b16_imagenet21k_small"):
        t = config.validate(config.TransferConfig, config.load_yaml(ROOT / f"parameters/transfer/{name}.yaml"))
        assert t.pretrained == "outputs/b16_imagenet21k" and t.finetune_resolution == 384
