"""ImageNet-ReaL, ImageNet-v2 and ObjectNet of the ImageNet-1k classifier: the model fine-tuned on
imagenet2012 in this transfer run, else `pretrained` itself (a 1000-class head).

`VARIANTS` is the one table of these evaluations: its key is the `imagenet_evals` name, and each entry
says the paper table's column, what the evaluation needs on disk, and how its evaluator is built from
the transfer parameters. Adding a variant (say ImageNet-Sketch) is one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from vitscale import checkpoints, config, pretrained
from vitscale.data import datasets, pipeline
from vitscale.evaluators import classification, imagenet_v2, objectnet, real
from vitscale.transfer import finetune

IMAGENET = "imagenet2012"


def prepared(name: str, data_dir: str | None) -> bool:
    """Whether a TFDS dataset has prepared files in data_dir (metadata only)."""
    try:
        return bool(tfds.builder(name, data_dir=data_dir or datasets.default_data_dir()).info.splits)
    except Exception:  # noqa: BLE001 - unknown name, version or unreadable files: not prepared
        return False


def _tfds_missing(name: Callable[[config.TransferConfig], str], how: Callable[[config.TransferConfig], str]):
    """A `missing` check for a TFDS dataset: (field, why) when `name(cfg)` is not prepared in data_dir."""

    def missing(cfg: config.TransferConfig) -> tuple[str, str] | None:
        if prepared(name(cfg), cfg.data_dir):
            return None
        return "imagenet_evals", f"{name(cfg)} is not prepared in data_dir; prepare it with `{how(cfg)}`"

    return missing


def _objectnet_missing(cfg: config.TransferConfig) -> tuple[str, str] | None:
    if cfg.objectnet_dir is None:
        return "objectnet_dir", "imagenet_evals has objectnet: name the ObjectNet folder (objectnet-1.0/)"
    if lacks := objectnet.missing(cfg.objectnet_dir):
        files = ", ".join(m.split("/")[-1] for m in objectnet.MAPPINGS)
        return "objectnet_dir", (
            f"{cfg.objectnet_dir} is not ObjectNet as distributed: missing {', '.join(lacks)}; accepted: the "
            f"objectnet-1.0 folder (images/ and mappings/ with {files})"
        )
    return None


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ImageNet evaluation: the paper table's column; `missing(cfg)`: (field, why) when its data is
    not there; `evaluator(cfg, pipe, batch_size, mesh)`: its classification evaluator."""

    column: str
    missing: Callable[[config.TransferConfig], tuple[str, str] | None]
    evaluator: Callable[..., classification.Classification]


VARIANTS: dict[str, Variant] = {
    "real": Variant(
        "ImageNet-ReaL",
        _tfds_missing(lambda cfg: real.DATASET, lambda cfg: real.PREPARE),
        lambda cfg, pipe, batch, mesh: real.evaluator(pipe, batch, mesh, data_dir=cfg.data_dir),
    ),
    "v2": Variant(
        "ImageNet-v2",
        _tfds_missing(
            lambda cfg: imagenet_v2.dataset(cfg.imagenet_v2_variant),
            lambda cfg: imagenet_v2.prepare_command(cfg.imagenet_v2_variant),
        ),
        lambda cfg, pipe, batch, mesh: imagenet_v2.evaluator(pipe, batch, mesh, cfg.imagenet_v2_variant, cfg.data_dir),
    ),
    "objectnet": Variant(
        "ObjectNet",
        _objectnet_missing,
        lambda cfg, pipe, batch, mesh: objectnet.evaluator(cfg.objectnet_dir, pipe, batch, mesh),
    ),
}


def check(problems: list[config.Problem], cfg: config.TransferConfig) -> None:
    """imagenet_evals names known evaluations whose data is there (ObjectNet: its mapping files)."""
    for name in cfg.imagenet_evals:
        if name not in VARIANTS:
            problems.append(
                config.Problem("imagenet_evals", f"unknown evaluation {name!r}; accepted: {', '.join(VARIANTS)}")
            )
        elif (why := VARIANTS[name].missing(cfg)) is not None:
            problems.append(config.Problem(why[0], f"{name}: {why[1]}" if why[0] == "imagenet_evals" else why[1]))


def classifier(m: pretrained.Pretrained, cfg: config.TransferConfig, fine: dict, out: Path, mesh):
    """(logits fn, params, evaluation pipeline) of the ImageNet-1k classifier of model `m`: its
    fine-tuned imagenet2012 run of this transfer run (restored from its checkpoint), else `pretrained`
    itself when its head has 1000 classes."""
    if IMAGENET in fine:
        result = fine[IMAGENET][m.name]
        c = finetune.setup(m.cfg, cfg, 1000, result["best_lr"], mesh)
        run = finetune.run_name({"lr": result["best_lr"]}, final=result["retrained"])
        mngr = checkpoints.manager(finetune.finetune_dir(out, IMAGENET) / m.name / run / "ckpt", keep=1)
        state, _ = checkpoints.restore_latest(mngr, c.trainer.abstract_state(), move_aside=False)
        if state is None:
            raise RuntimeError(f"the imagenet2012 fine-tuning of {m.name} left no readable checkpoint in {run}")
        return classification.logits_fn(c.trainer), state.params, c.pipe
    head = m.params["head"]["kernel"].shape[-1]
    if head != 1000:
        raise config.ConfigError(
            [config.Problem("imagenet_evals", f"{m.source} has a {head}-class head; ImageNet-1k needs 1000")]
        )
    eval_ops = tuple(cfg.pp_finetune_eval) if cfg.pp_finetune_eval else None
    pipe = pipeline.Pipeline(image_size=m.cfg.image_size, channels=m.cfg.channels, eval_ops=eval_ops)
    return classification.logits_fn(m.trainer), m.params, pipe


def evaluate(
    models: list[pretrained.Pretrained], cfg: config.TransferConfig, fine: dict, out: Path, mesh
) -> dict[str, dict[str, Any]]:
    """{model: {name: {acc, images, ...}}} for the evaluations imagenet_evals names."""
    if not cfg.imagenet_evals:
        return {}
    results = {}
    for m in models if IMAGENET in fine else models[:1]:
        logits, params, pipe = classifier(m, cfg, fine, out, mesh)
        r = {
            name: VARIANTS[name].evaluator(cfg, pipe, cfg.eval_batch_size, mesh).run(logits, params)
            for name in VARIANTS
            if name in cfg.imagenet_evals
        }
        results[m.name] = r
        print(f"ImageNet evaluations {m.name}: " + ", ".join(f"{k} {v['acc']:.2%}" for k, v in r.items()))
    return results
