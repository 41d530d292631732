"""Pretraining: check -> data -> state -> loop -> cooldown branches -> summary, top to bottom.

`check(cfg)` is every check that needs disk, datasets or devices; `run(cfg, out_dir)` (last in
this file) calls it, then trains. The notebook cell in JupyterLab and the papermill batch run both
call `run`. A run folder holding checkpoints resumes from the newest readable one; batches are a
pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitscale import (
    allocator,
    checkpoints,
    checks,
    config,
    evaluators,
    flops,
    loop,
    metrics,
    optim,
    runs,
    sharding,
    weights,
)
from vitscale.data import datasets, pipeline, sources
from vitscale.models import vit


# ----------------------------------------------------------------------------- what a config builds
def build_model(cfg: config.PretrainConfig, num_classes: int, image_size: int | None = None) -> vit.ViT:
    """The ViT of `cfg` (its variant with any shape overrides) for `num_classes`."""
    shape = cfg.model_shape()
    head_bias = cfg.head_bias_init
    if head_bias is None:
        head_bias = -10.0 if cfg.loss == "sigmoid_xent" else 0.0  # the paper's sigmoid head starts at p ~ 0
    return vit.ViT(
        num_classes=num_classes,
        pool_type=cfg.pool_type,
        posemb=cfg.posemb,
        dropout=cfg.dropout,
        head_bias_init=head_bias,
        remat=cfg.remat,
        scan=cfg.scan,
        dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32,
        representation_size=cfg.representation_size,
        gelu=cfg.gelu,
        **shape,
    )


def image_shape(cfg: config.PretrainConfig) -> tuple[int, int, int]:
    return (cfg.image_size, cfg.image_size, cfg.channels)


def build_schedule(cfg: config.PretrainConfig) -> optax.Schedule:
    return optim.make_schedule(
        cfg.schedule,
        cfg.lr,
        cfg.total_steps,
        warmup_steps=cfg.warmup_steps,
        timescale=cfg.timescale,
        cooldown_steps=cfg.cooldown_steps,
    )


def build_optimizer(cfg: config.PretrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    rules = optim.DEFAULT_WD_RULES if cfg.wd_rules is None else tuple(tuple(r) for r in cfg.wd_rules)
    return optim.make_optimizer(
        cfg.optimizer,
        schedule,
        weight_decay=cfg.weight_decay,
        wd_rules=rules,
        grad_clip_norm=cfg.grad_clip_norm,
        b2=cfg.b2,
    )


def input_pipeline(cfg: config.PretrainConfig) -> pipeline.Pipeline:
    """pp_train / pp_eval when given, else today's pipeline from image_size, channels, crop_padding, flip."""
    return pipeline.Pipeline(
        image_size=cfg.image_size,
        channels=cfg.channels,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        train_ops=tuple(cfg.pp_train) if cfg.pp_train else None,
        eval_ops=tuple(cfg.pp_eval) if cfg.pp_eval else None,
    )


def loop_spec(cfg: config.PretrainConfig) -> loop.LoopSpec:
    return loop.LoopSpec(
        total_steps=cfg.total_steps,
        batch_size=cfg.batch_size,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints,
        keep_every=cfg.keep_every,
    )


def make_trainer(
    cfg: config.PretrainConfig, mesh, num_classes: int, schedule: optax.Schedule | None = None, seed: int | None = None
) -> loop.Trainer:
    """The compiled steps of a pretraining run (`schedule`: the run's own unless given, e.g. a branch's)."""
    return loop.make_trainer(
        build_model(cfg, num_classes),
        build_optimizer(cfg, schedule or build_schedule(cfg)),
        mesh,
        image_shape=image_shape(cfg),
        loss=cfg.loss,
        seed=cfg.seed if seed is None else seed,
        chains=None if cfg.grad_chains == "auto" else cfg.grad_chains,
    )


def make_evaluators(
    cfg: config.PretrainConfig, trainer: loop.Trainer, test: sources.Split | sources.Source, pipe: pipeline.Pipeline
) -> loop.Evaluators:
    """Test-split loss and accuracy at every evaluation, plus few-shot linear transfer every
    `fewshot_every` steps and at the end of the main run and of each branch (`final`)."""
    fewshot = None
    if cfg.fewshot_datasets:
        fewshot = evaluators.FewShotEvaluator(
            cfg.fewshot_datasets,
            pipe,
            shots=tuple(cfg.fewshot_shots),
            seeds=tuple(range(cfg.fewshot_seeds)),
            data_dir=cfg.data_dir,
            batch_size=cfg.eval_batch_size,
            input=cfg.input,
        )
    every = cfg.fewshot_every or cfg.eval_every

    def evaluate(params, step: int, final: bool = False) -> dict[str, float]:
        test_metrics = loop.evaluate(trainer, params, test, pipe, cfg.eval_batch_size)
        record = {metrics.on_split("test", k): v for k, v in test_metrics.items()}
        if fewshot is not None and (step % every == 0 or final):
            record.update(fewshot.run(lambda x: trainer.features(params, x), trainer.mesh))
        return record

    return evaluate


def batches_from(cfg: config.PretrainConfig, train: sources.Split | sources.Source, pipe: pipeline.Pipeline):
    """step -> this host's training batches from that step on."""
    return lambda step: pipeline.train_batches(
        train,
        pipe,
        global_batch=cfg.batch_size,
        seed=cfg.seed,
        start_step=step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def fill_params(loaded: dict[str, Any], model: vit.ViT, image_shape: tuple[int, int, int], fresh: Any = None) -> Any:
    """Flat '/'-keyed weights read from a file, as `model`'s parameter tree: the position embedding
    resized to its grid; a head the file lacks or of another class count from `fresh` (default: zeros)."""
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))["params"])
    tree = weights.unflatten(loaded)
    if "head" not in tree or any(tree["head"][k].shape != v.shape for k, v in target["head"].items()):
        tree["head"] = (
            fresh["head"] if fresh is not None else {k: np.zeros(v.shape, v.dtype) for k, v in target["head"].items()}
        )
    return vit.adapt_params(tree, target)


def start_from_file(cfg: config.PretrainConfig, trainer: loop.Trainer):
    """Step 0 of a run with `init_from`: the file's weights (a head of another class count: the fresh init's)."""
    loaded, _ = weights.load(cfg.init_from, weights.spec_of(cfg), field="init_from")
    fresh = trainer.init_fn().params
    params = fill_params(loaded, trainer.model, image_shape(cfg), fresh)
    return trainer.start_from(params), None


# ----------------------------------------------------------------------------- cooldown branches
def branch_name(branch: config.CooldownBranch) -> str:
    return f"cooldown_{branch.start}+{branch.steps}"


def run_branch(
    cfg: config.PretrainConfig,
    branch: config.CooldownBranch,
    out: Path,
    mesh,
    num_classes: int,
    batches,
    make_evals,
) -> dict[str, Any]:
    """A cooldown branch: from the main run's checkpoint at `start`, cool down linearly over `steps`."""
    name = branch_name(branch)
    schedule = optim.cooldown_branch_schedule(
        cfg.lr,
        branch_start=branch.start,
        cooldown_steps=branch.steps,
        warmup_steps=cfg.warmup_steps,
        timescale=cfg.timescale,
    )
    trainer = make_trainer(cfg, mesh, num_classes, schedule)

    def from_main_run():
        main = checkpoints.manager(out / "ckpt", protect={branch.start})
        state, meta = checkpoints.restore_latest(main, trainer.abstract_state(), max_step=branch.start)
        if state is None or int(state.step) != branch.start:
            raise RuntimeError(f"cooldown branch {name}: the main run has no checkpoint at step {branch.start}")
        return state, meta

    end = branch.start + branch.steps
    _, meta = loop.fit(
        trainer,
        loop_spec(cfg),
        out / "branches" / name,
        schedule=schedule,
        batches=batches,
        evaluators=make_evals(trainer),
        desc=name,
        start=from_main_run,
        end_step=end,
        params_text=config.dump(cfg) + f"branch: {name}\n",
    )
    final = runs.final_metrics(runs.read_metrics(out / "branches" / name / "metrics.jsonl"))
    return {
        "name": name,
        "start": branch.start,
        "steps": branch.steps,
        "total_steps": end,
        "images_seen": end * cfg.batch_size,
        "device_seconds": meta.get("device_seconds"),  # the main run's up to the branch point, plus the branch's
        "metrics": final,
    }


# ----------------------------------------------------------------------------- summary
def make_summary(
    cfg: config.PretrainConfig, model: vit.ViT, records: list[dict], t0: float, branches: list[dict], meta: dict
) -> dict[str, Any]:
    """summary.json: final metrics, size and compute (FLOPs, device-seconds), and the environment."""
    fwd = flops.forward_flops(model, image_shape(cfg))
    images_seen = cfg.total_steps * cfg.batch_size
    for b in branches:
        b["train_flops"] = 3 * fwd * b["images_seen"]
    return {
        "kind": "pretrain",
        "name": cfg.name,
        "variant": cfg.variant,
        "dataset": cfg.dataset,
        "train_examples": cfg.train_examples,
        "total_steps": cfg.total_steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "images_seen": images_seen,
        "num_params": flops.count_params(model, image_shape(cfg)),
        "forward_flops_per_image": fwd,
        "train_flops": 3 * fwd * images_seen,
        "final": runs.final_metrics(records),
        "best": {metrics.TEST_ACC: max((r[metrics.TEST_ACC] for r in records if metrics.TEST_ACC in r), default=None)},
        "device_seconds": meta.get("device_seconds"),
        "device_count": jax.device_count(),
        # Wall seconds of the main run spent evaluating and checkpointing, and their share of it.
        "eval_seconds": meta.get("eval_seconds"),
        "checkpoint_seconds": meta.get("checkpoint_seconds"),
        "eval_share": meta["eval_seconds"] / meta["wall_seconds"] if meta.get("wall_seconds") else None,
        "wall_seconds_this_session": time.time() - t0,
        "branches": branches,
        "environment": runs.environment(),
    }


# ----------------------------------------------------------------------------- entry points
def check(cfg: config.PretrainConfig) -> None:
    """Everything about `cfg` that needs disk, datasets or devices, before any compute: the splits
    exist, train_examples fits its split, few-shot pools have enough images per class, the mesh and
    batch fit the devices. Raises one ConfigError listing every problem."""
    problems: list[config.Problem] = []
    n_train = checks.split_size(problems, "dataset", cfg.dataset, cfg.train_split, cfg.data_dir)
    if n_train is not None and cfg.train_examples and cfg.train_examples > n_train:
        problems.append(
            config.Problem(
                "train_examples",
                f"{cfg.train_examples} exceeds the {n_train} examples of {cfg.dataset}:{cfg.train_split} "
                f"(accepted: 1 to {n_train}, or null for all)",
            )
        )
    checks.split_size(problems, "test_split", cfg.dataset, cfg.test_split, cfg.data_dir)
    if n_train is not None:
        checks.input_path(problems, "input", cfg.dataset, cfg.train_split, cfg.data_dir, cfg.input)
    checks.fewshot_pools(problems, "fewshot_datasets", cfg.fewshot_datasets, cfg.fewshot_shots, cfg.data_dir, cfg.input)
    checks.devices(problems, cfg.mesh, {"batch_size": cfg.batch_size}, cfg.grad_chains)
    if cfg.init_from:
        try:  # names and shapes against the model, from the file's headers (numpy)
            weights.check_file(cfg.init_from, weights.spec_of(cfg), field="init_from")
        except config.ConfigError as e:
            problems += e.problems
    checks.raise_problems(problems)


def run(cfg: config.PretrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Pretrain as `cfg` says into `out_dir`, resuming from its checkpoints; returns the summary."""
    out = Path(out_dir)
    sharding.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    check(cfg)
    checks.claim_run_dir(out, cfg)
    t0 = time.time()

    # 1. Data: the training subset and the test split, in memory or streamed (cfg.input).
    train = sources.load(cfg.dataset, cfg.train_split_name(), cfg.data_dir, cfg.input)
    test = sources.load(cfg.dataset, cfg.test_split, cfg.data_dir, cfg.input)
    pipe = input_pipeline(cfg)

    # 2. Compiled steps on the mesh.
    mesh = sharding.make_mesh(cfg.mesh)
    if advice := allocator.check(mesh.devices.flat[0].platform):
        warnings.warn(advice, stacklevel=2)
    trainer = make_trainer(cfg, mesh, train.num_classes)
    make_evals = lambda t: make_evaluators(cfg, t, test, pipe)
    batches = batches_from(cfg, train, pipe)

    # 3. The main run, keeping the checkpoints the branches start from.
    starts = {b.start for b in cfg.cooldown_branches}
    spec = loop_spec(cfg)
    _, meta = loop.fit(
        trainer,
        spec,
        out,
        schedule=build_schedule(cfg),
        batches=batches,
        evaluators=make_evals(trainer),
        desc=cfg.name,
        protect=starts,
        params_text=config.dump(cfg),
        start=(lambda: start_from_file(cfg, trainer)) if cfg.init_from else None,
    )

    # 4. Cooldown branches, each from its start checkpoint.
    branches = [run_branch(cfg, b, out, mesh, train.num_classes, batches, make_evals) for b in cfg.cooldown_branches]

    # 5. The summary.
    summary = make_summary(cfg, trainer.model, runs.read_metrics(out / "metrics.jsonl"), t0, branches, meta)
    summary["train_examples"] = len(train)  # the data axis, resolved when the parameter is None
    summary["input"] = {
        "train": "stream" if isinstance(train, sources.Source) else "memory",
        "test": "stream" if isinstance(test, sources.Source) else "memory",
        "skipped_files": len(datasets.skipped_files(cfg.dataset, cfg.data_dir)),  # unreadable images of a folder
    }
    runs.write_json(out / "summary.json", summary)
    return summary
