"""Where a model's weights come from (a pretraining run folder, a released or exported .npz, a random
init), and fitting loaded weights to a model: the one place either happens."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitscale import build, checkpoints, config, loop, runs, weights
from vitscale.data import datasets
from vitscale.models import vit

RANDOM = config.RANDOM


@dataclasses.dataclass
class Pretrained:
    """A model to transfer: its pretraining parameters, its weights, and the trainer of its shape
    (whose `features` gives the frozen pre_logits for few-shot evaluation)."""

    name: str  # "pretrained" or "random": how reports label it
    cfg: config.PretrainConfig
    params: Any
    step: int | None  # pretraining steps behind the weights (0: a random init; None: a weights file's)
    source: str  # the run folder, the .npz file, or "random"
    trainer: loop.Trainer
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)  # where the weights came from (reports)

    def features(self, images: jax.Array) -> jax.Array:
        return self.trainer.features(self.params, images)


def read_pretrain_config(run_dir: Path) -> config.PretrainConfig:
    """The PretrainConfig a run folder was made with (its params.yaml)."""
    try:
        return config.validate(config.PretrainConfig, config.load_yaml(run_dir / "params.yaml"))
    except config.ConfigError as e:
        raise config.ConfigError(
            [config.Problem("pretrained", f"{run_dir / 'params.yaml'} is not a valid pretraining parameter file: {e}")]
        ) from None


def run_classes(run_dir: Path) -> int:
    """The class count of a run's model, from its newest checkpoint's head shape (no dataset opened)."""
    shapes, _ = checkpoints.param_shapes(run_dir / "ckpt")
    if shapes is None or "head" not in shapes:
        raise config.ConfigError([config.Problem("pretrained", f"no checkpoint in {run_dir / 'ckpt'} could be read")])
    return shapes["head"]["bias"][0]


def read_run(path: str | Path) -> tuple[Path, config.PretrainConfig, Any, int]:
    """(run folder, its config, its newest readable params as numpy, their step): no optimizer, no dataset."""
    run = runs.find_run(path)
    cfg = read_pretrain_config(run)
    params, step = checkpoints.restore_params(run / "ckpt")
    _say_skipped(run, step)
    return run, cfg, params, step


def _say_skipped(run: Path, step: int | None) -> None:
    """One line when the newest checkpoint of `run` could not be read and an older `step` is used
    instead; a ConfigError naming the damaged steps when none could be read (step None)."""
    skipped = checkpoints.newer_than(run / "ckpt", step)
    damaged = ("step " if len(skipped) == 1 else "steps ") + ", ".join(str(s) for s in skipped)
    if step is None:
        problem = f"no checkpoint in {run / 'ckpt'} could be read (damaged: {damaged})"
        raise config.ConfigError([config.Problem("pretrained", problem)])
    if skipped:
        print(
            f"note: {run / 'ckpt'}: the checkpoint at {damaged} is unreadable; using step {step}, "
            "the newest readable one",
            file=sys.stderr,
        )


def load_run(path: str | Path, mesh) -> Pretrained:
    """The newest readable checkpoint of a pretraining run folder: restore the state, keep its params."""
    run = runs.find_run(path)
    cfg = read_pretrain_config(run)
    trainer = build.trainer(cfg, mesh, run_classes(run))
    mngr = checkpoints.manager(run / "ckpt", keep=cfg.keep_checkpoints)
    try:
        state, _ = checkpoints.restore_latest(mngr, trainer.abstract_state(), move_aside=False)
    finally:
        mngr.close()
    step = None if state is None else int(jax.device_get(state.step))
    _say_skipped(run, step)
    origin = {"file": str(run), "layout": "vitscale run folder (orbax)", "variant": cfg.variant, "step": step}
    return Pretrained("pretrained", cfg, state.params, step, str(run), trainer, origin)


def load_npz(path: str | Path, cfg: config.PretrainConfig, mesh) -> Pretrained:
    """Released or exported weights (vitscale.weights) for the model `cfg` describes, head and all."""
    loaded, found = weights.load(path, cfg.model_spec())
    classes = found["num_classes"] or 1
    trainer = build.trainer(cfg, mesh, classes)
    params = fit(weights.unflatten(loaded), trainer.model, build.image_shape(cfg), head="keep")
    params = jax.device_put(params, trainer.state_shardings.params)
    return Pretrained("pretrained", cfg, params, None, found["file"], trainer, found)


def dataset_classes(dataset: str, data_dir: str | None = None) -> int:
    """Class count from a dataset's metadata (no decoding)."""
    builder = datasets.get_builder(dataset, data_dir)
    label_key = (builder.info.supervised_keys or ("image", "label"))[1]
    return builder.info.features[label_key].num_classes


def random_init(cfg: config.PretrainConfig, mesh, seed: int = 0) -> Pretrained:
    """An untrained model of the shape `cfg` describes (the baseline a pretrained model must beat),
    with a head for the classes of its pretraining dataset."""
    trainer = build.trainer(cfg, mesh, dataset_classes(cfg.dataset, cfg.data_dir), seed=seed)
    params = trainer.init_fn().params
    origin = {"file": RANDOM, "layout": "random init", "variant": cfg.variant, "seed": seed}
    return Pretrained(RANDOM, cfg, params, 0, RANDOM, trainer, origin)


def fit(params: Any, model: vit.ViT, image_shape: tuple[int, int, int], head: str | Any = "zero") -> Any:
    """Loaded `params` (a nested tree) fitted to `model` at `image_shape`: the position embedding resized
    (bilinearly) to its patch grid, the rest as loaded; the head: "zero" a zero head of the model's
    class count (transfer), "keep" the loaded one when it fits (else zeros), or a tree to use when the
    loaded one does not fit (a fresh init's). Any other shape mismatch is an error naming the
    parameter (vit.adapt_params)."""
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))["params"])
    zeros = {k: np.zeros(v.shape, v.dtype) for k, v in target["head"].items()}
    if isinstance(head, str) and head == "zero":
        if "head" not in params:
            raise ValueError(f"pretrained parameters have no 'head' to replace (top level: {sorted(params)})")
        new_head = zeros
    elif "head" in params and all(params["head"][k].shape == v.shape for k, v in target["head"].items()):
        new_head = params["head"]
    else:
        new_head = zeros if isinstance(head, str) else head
    return vit.adapt_params({**{k: v for k, v in params.items() if k != "head"}, "head": new_head}, target)


def start_from_file(cfg: config.PretrainConfig, trainer: loop.Trainer):
    """Step 0 of a run with `init_from`: the file's weights (a head of another class count: the fresh init's)."""
    loaded, _ = weights.load(cfg.init_from, cfg.model_spec(), field="init_from")
    fresh = trainer.init_fn().params
    params = fit(weights.unflatten(loaded), trainer.model, build.image_shape(cfg), head=fresh["head"])
    return trainer.start_from(params), None
