"""Transfer by fine-tuning: a pretrained ViT with a new zero head, its position embedding resized to the
fine-tuning resolution, trained with SGD.

The protocol of "Scaling Vision Transformers" (and of ViT before it): SGD with momentum 0.9 (kept in
bfloat16, as big_vision's `momentum_hp`), no weight decay, gradient clipping at global norm 1, a
cosine schedule after a linear warmup, no augmentation. The learning rate is picked from a small
grid by accuracy on a held-out 2% of the training split; then the model is trained again, from the
same start, on the whole training split with that rate and scored on the test split
(`retrain: false` keeps the best grid run instead, trained on the other 98%). The test split plays
no part in the choice. Every run goes through `loop.fit`, so it logs metrics.jsonl, checkpoints at
its end and is skipped (read back) when run again:

  <transfer run>/finetune/<dataset>/<model>/lr_<lr>/         grid runs: metrics.jsonl (val/...), ckpt/
  <transfer run>/finetune/<dataset>/<model>/final_lr_<lr>/   the retrained run: metrics.jsonl (test/...), ckpt/
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from vitscale import build, config, loop, metrics, optim, pretrained, runs
from vitscale.data import datasets, pipeline, sources

HOLDOUT_SEED = 0  # the held-out part is a property of the dataset: the same for every model, lr and seed


# ----------------------------------------------------------------------------- data
def holdout_split(
    split: sources.Split | sources.Source, fraction: float = 0.02, seed: int = HOLDOUT_SEED
) -> tuple[sources.Split | sources.Source, sources.Split | sources.Source]:
    """(train part, held-out part): a fixed random `fraction` of the split is held out for picking the
    learning rate. Disjoint, together the whole split, the same on every call (seeded permutation,
    robust to splits stored in class order)."""
    n = len(split)
    n_holdout = int(round(n * fraction))
    if not 0 < n_holdout < n:
        raise ValueError(f"holdout fraction {fraction} of the {n} images of {split.name} leaves an empty part")
    perm = np.random.default_rng(seed).permutation(n)
    keep, hold = np.sort(perm[n_holdout:]), np.sort(perm[:n_holdout])
    if isinstance(split, sources.Source):  # streamed: views over the same files
        return split.subset(keep, f"{1 - fraction:.0%}"), split.subset(hold, f"held-out {fraction:.0%}")
    part = lambda idx, tag: sources.Split(
        name=f"{split.name}({tag})", images=split.images[idx], labels=split.labels[idx], num_classes=split.num_classes
    )
    return part(keep, f"{1 - fraction:.0%}"), part(hold, f"held-out {fraction:.0%}")


def resolution(cfg: config.TransferConfig, pre: config.PretrainConfig) -> int:
    """The fine-tuning resolution: finetune_resolution, or the pretraining one."""
    return cfg.finetune_resolution or pre.image_size


# ----------------------------------------------------------------------------- one run
@dataclasses.dataclass
class _Compiled:
    """One compiled fine-tuning setup (per class count and lr), shared by every start point."""

    trainer: loop.Trainer
    schedule: optax.Schedule
    spec: loop.LoopSpec
    pipe: pipeline.Pipeline
    image_shape: tuple[int, int, int]


def _compile(pre: config.PretrainConfig, cfg: config.TransferConfig, classes: int, lr: float, mesh) -> _Compiled:
    """The pretrained shape at the fine-tuning resolution with a zero-bias head, SGD with momentum
    at `lr` (no weight decay, clipping), cosine after warmup, softmax cross-entropy."""
    res = resolution(cfg, pre)
    schedule = optim.make_schedule("cosine", lr, cfg.finetune_steps, warmup_steps=cfg.warmup_steps)
    tx = optim.make_optimizer(
        "sgd", schedule, weight_decay=0.0, grad_clip_norm=cfg.grad_clip_norm, momentum=cfg.momentum
    )
    model = build.model(pre, classes).clone(head_bias_init=0.0)
    shape = (res, res, pre.channels)
    trainer = loop.make_trainer(
        model, tx, mesh, image_shape=shape, loss="softmax_xent", seed=cfg.seed, peak_flops=cfg.peak_flops
    )
    spec = loop.LoopSpec(
        total_steps=cfg.finetune_steps,
        batch_size=cfg.finetune_batch_size,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.finetune_steps,
        keep_checkpoints=1,
    )
    pipe = pipeline.Pipeline(
        image_size=res,
        channels=pre.channels,
        train_ops=tuple(cfg.pp_finetune) if cfg.pp_finetune else None,
        eval_ops=tuple(cfg.pp_finetune_eval) if cfg.pp_finetune_eval else None,
    )
    return _Compiled(trainer, schedule, spec, pipe, shape)


def train_one(
    c: _Compiled,
    cfg: config.TransferConfig,
    params: Any,
    train_split: sources.Split | sources.Source,
    eval_split: sources.Split | sources.Source,
    eval_prefix: str,
    run_dir: Path,
    desc: str,
) -> tuple[dict[str, float], loop.TrainState]:
    """Fine-tune from `params` on `train_split`, evaluating on `eval_split` as `<eval_prefix>/acc|loss`;
    a run folder that already holds the finished run is read back instead. Returns (final metrics and
    device_seconds, state)."""

    def evaluate(p, step: int, final: bool = False) -> dict[str, float]:
        result = loop.evaluate(
            c.trainer, p, pipeline.eval_batches(eval_split, c.pipe, loop.eval_batch_size(cfg.eval_batch_size))
        )
        return {metrics.on_split(eval_prefix, k): v for k, v in result.items()}

    batches = lambda step: pipeline.train_batches(
        train_split,
        c.pipe,
        global_batch=c.spec.batch_size,
        seed=cfg.seed,
        start_step=step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    state, meta = loop.fit(
        c.trainer,
        c.spec,
        run_dir,
        schedule=c.schedule,
        batches=batches,
        evaluators=evaluate,
        desc=desc,
        start=lambda: (c.trainer.start_from(params), None),
        params_text=config.dump(cfg) + f"run: {desc}\n",
    )
    final = runs.final_metrics(runs.read_metrics(run_dir / "metrics.jsonl"))
    final = {k: v for k, v in final.items() if k.startswith((f"{eval_prefix}/", "train/"))}
    final["device_seconds"] = meta.get("device_seconds")
    return final, state


# ----------------------------------------------------------------------------- lr selection, then the final run
@dataclasses.dataclass
class _Splits:
    """A fine-tuning dataset's splits: the whole training split, its two parts, and the test split."""

    full: sources.Split | sources.Source
    train_part: sources.Split | sources.Source
    holdout: sources.Split | sources.Source
    test: sources.Split | sources.Source


def _grid_run(
    c: _Compiled, lr: float, cfg: config.TransferConfig, init_params: Any, d: _Splits, run_dir: Path, desc: str
):
    """One lr of the grid, trained on the training part and scored on the held-out part: (row, state)."""
    row: dict[str, Any] = {"lr": lr}
    try:
        final, state = train_one(c, cfg, init_params, d.train_part, d.holdout, "val", run_dir, desc=desc)
    except loop.NonFiniteLoss as e:
        return {**row, metrics.VAL_ACC: None, metrics.VAL_LOSS: None, "diverged": True, "error": str(e)}, None
    keep = {
        metrics.VAL_ACC: final[metrics.VAL_ACC],
        metrics.VAL_LOSS: final[metrics.VAL_LOSS],
        metrics.TRAIN_LOSS: final.get(metrics.TRAIN_LOSS),
    }
    return {**row, **keep, "device_seconds": final["device_seconds"], "diverged": False}, state


def beats(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether a grid run is the new best: it did not diverge and has the higher held-out accuracy,
    ties going to the lower held-out loss (the fine-tuning and the VTAB grids alike)."""
    if row["diverged"]:
        return False
    key = lambda r: (r[metrics.VAL_ACC], -r[metrics.VAL_LOSS])
    return best is None or key(row) > key(best)


def _search(m: pretrained.Pretrained, dataset: str, cfg: config.TransferConfig, d: _Splits, setup, out: Path):
    """Every lr of the grid for model `m`: (grid rows, best row, its state, the fitted start params).
    Best: the highest held-out accuracy; ties go to the lower held-out loss."""
    init_params = None  # the model's params with a new head at the fine-tuning resolution
    grid, best, best_state = [], None, None
    for lr in cfg.lr_grid:
        c = setup(m.cfg, lr)
        if init_params is None:
            init_params = pretrained.fit(m.params, c.trainer.model, c.image_shape)
        row, state = _grid_run(
            c,
            lr,
            cfg,
            init_params,
            d,
            out / m.name / f"lr_{lr:g}",
            f"{datasets.metric_name(dataset)} {m.name} lr={lr:g}",
        )
        grid.append(row)
        if beats(row, best):
            best, best_state = row, state
        del state
    if best is None:
        raise RuntimeError(
            f"fine-tuning {m.name} on {dataset}: every lr in lr_grid {cfg.lr_grid} diverged; try smaller learning rates"
        )
    return grid, best, best_state, init_params


def _note_if_at_grid_edge(name: str, dataset: str, lr_grid, best_lr: float) -> bool:
    """Whether the best lr is the smallest or largest of a grid of several; prints a note when it is."""
    at_edge = len(lr_grid) > 1 and best_lr in (min(lr_grid), max(lr_grid))
    if at_edge:
        print(
            f"note: {name} on {dataset}: the best lr {best_lr:g} is at the edge of lr_grid {lr_grid}; "
            "a wider grid may do better"
        )
    return at_edge


def _retrain_and_test(
    c: _Compiled, cfg: config.TransferConfig, init_params: Any, d: _Splits, run_dir: Path, desc: str
) -> tuple[dict[str, float], list[float | None]]:
    """The final run on the whole training split, scored on the test split: (test metrics, [device_seconds])."""
    final, _ = train_one(c, cfg, init_params, d.full, d.test, "test", run_dir, desc=desc)
    test_metrics = {metrics.TEST_ACC: final[metrics.TEST_ACC], metrics.TEST_LOSS: final[metrics.TEST_LOSS]}
    return test_metrics, [final["device_seconds"]]


def _test_best_grid_run(
    c: _Compiled, cfg: config.TransferConfig, state: loop.TrainState, d: _Splits
) -> dict[str, float]:
    """The best grid run (trained on the training part) scored on the test split."""
    batches = pipeline.eval_batches(d.test, c.pipe, loop.eval_batch_size(cfg.eval_batch_size))
    scores = loop.evaluate(c.trainer, state.params, batches)
    return {f"test/{k}": v for k, v in scores.items()}


def _finetune_one(
    m: pretrained.Pretrained, dataset: str, cfg: config.TransferConfig, d: _Splits, setup, out: Path
) -> dict[str, Any]:
    """One model: the lr search, then the test score of the retrained (or best grid) run; its result."""
    grid, best, state, init_params = _search(m, dataset, cfg, d, setup, out)
    best_lr = best["lr"]
    at_edge = _note_if_at_grid_edge(m.name, dataset, cfg.lr_grid, best_lr)
    c = setup(m.cfg, best_lr)
    if cfg.retrain:
        state = None  # free the grid run's state before the final run
        run_dir = out / m.name / f"final_lr_{best_lr:g}"
        desc = f"{datasets.metric_name(dataset)} {m.name} final lr={best_lr:g}"
        test_metrics, seconds = _retrain_and_test(c, cfg, init_params, d, run_dir, desc)
    else:
        test_metrics, seconds = _test_best_grid_run(c, cfg, state, d), []
    seconds += [g.get("device_seconds") for g in grid]
    return {
        "dataset": dataset,
        "model": m.name,
        "resolution": c.image_shape[0],
        "steps": c.spec.total_steps,
        "batch_size": c.spec.batch_size,
        "grid": grid,
        "best_lr": best_lr,
        "best_lr_at_grid_edge": at_edge,
        "retrained": cfg.retrain,
        "train_images": len(d.full) if cfg.retrain else len(d.train_part),
        "holdout_images": len(d.holdout),
        "test_images": len(d.test),
        **test_metrics,
        # Training device-seconds of the grid runs and the final run (kept across resumes).
        "device_seconds": sum(x for x in seconds if x is not None),
    }


def finetune(
    models: list[pretrained.Pretrained], dataset: str, cfg: config.TransferConfig, out_dir: str | Path, mesh
) -> dict[str, dict[str, Any]]:
    """Fine-tune each model on `dataset`: pick the lr on the held-out part, then retrain on the whole
    training split (or keep the best grid run) and score the test split. Returns {model name: result}."""
    out = Path(out_dir)
    train_name, test_name = datasets.finetune_splits(dataset)
    full = sources.load(dataset, train_name, cfg.data_dir, cfg.input)
    d = _Splits(
        full, *holdout_split(full, cfg.holdout_fraction), sources.load(dataset, test_name, cfg.data_dir, cfg.input)
    )
    compiled: dict[float, _Compiled] = {}

    def setup(pre: config.PretrainConfig, lr: float) -> _Compiled:
        if lr not in compiled:
            compiled[lr] = _compile(pre, cfg, full.num_classes, lr, mesh)
        return compiled[lr]

    return {m.name: _finetune_one(m, dataset, cfg, d, setup, out) for m in models}
