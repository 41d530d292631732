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

`search` is the one grid search: the lr grid here and VTAB's (steps, lr) grid (transfer.vtab) are
both lists of points, each a run folder named by `run_name`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from vitscale import build, config, loop, metrics, optim, pretrained, runs, sharding
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
class Setup:
    """One compiled fine-tuning setup (per class count and grid point), shared by every start point;
    `cfg` is the run's parameters (a VTAB point's steps and seed written in)."""

    trainer: loop.Trainer
    schedule: optax.Schedule
    spec: loop.LoopSpec
    pipe: pipeline.Pipeline
    image_shape: tuple[int, int, int]
    cfg: config.TransferConfig


def setup(pre: config.PretrainConfig, cfg: config.TransferConfig, classes: int, lr: float, mesh) -> Setup:
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
    return Setup(trainer, schedule, spec, pipe, shape, cfg)


def score(c: Setup, params: Any, split: sources.Split | sources.Source, prefix: str) -> dict[str, float]:
    """`<prefix>/acc` and `<prefix>/loss` of `params` over a whole split."""
    batches = pipeline.eval_batches(split, c.pipe, sharding.eval_batch_size(c.cfg.eval_batch_size))
    return {metrics.on_split(prefix, k): v for k, v in loop.evaluate(c.trainer, params, batches).items()}


def train_one(
    c: Setup, params: Any, train_split: sources.Split | sources.Source, scored: Scored, run_dir: Path, desc: str
) -> tuple[dict[str, float], loop.TrainState]:
    """Fine-tune from `params` on `train_split`, scored on `scored.split` as `<scored.prefix>/acc|loss`;
    a run folder that already holds the finished run is read back instead. Returns (final metrics and
    device_seconds, state)."""
    cfg = c.cfg
    batches = lambda step: pipeline.train_batches(
        train_split,
        c.pipe,
        global_batch=c.spec.batch_size,
        seed=cfg.seed,
        start_step=step,
        host=pipeline.Host(jax.process_index(), jax.process_count()),
    )
    state, meta = loop.fit(
        c.trainer,
        c.spec,
        run_dir,
        schedule=c.schedule,
        batches=batches,
        evaluators=lambda p, step, final=False: score(c, p, scored.split, scored.prefix),
        desc=desc,
        start=lambda: (c.trainer.start_from(params), None),
        params_text=config.dump(cfg) + f"run: {desc}\n",
    )
    final = runs.final_metrics(runs.read_metrics(run_dir / "metrics.jsonl"))
    final = {k: v for k, v in final.items() if k.startswith((f"{scored.prefix}/", "train/"))}
    final["device_seconds"] = meta.get("device_seconds")
    return final, state


# ----------------------------------------------------------------------------- the grid search, then the final run
@dataclasses.dataclass(frozen=True)
class Scored:
    """A split a run is scored on, and the prefix of its metrics (val, test)."""

    split: sources.Split | sources.Source
    prefix: str


@dataclasses.dataclass(frozen=True)
class Data:
    """A fine-tuning dataset's splits: what the final run trains on (`full`), what the grid runs train
    on (`train_part`) and are picked on (`holdout`), and the test split."""

    full: sources.Split | sources.Source
    train_part: sources.Split | sources.Source
    holdout: sources.Split | sources.Source
    test: sources.Split | sources.Source


FINAL = "final_"  # the retrained run's folder: final_<grid point's name>


def _text(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"  # steps as written, rates short: 500, 0.01


def run_name(point: dict[str, float], final: bool = False) -> str:
    """A grid point's run folder: lr_0.01 (fine-tuning), steps_500_lr_0.01 (VTAB); final_... when retrained."""
    return (FINAL if final else "") + "_".join(f"{k}_{_text(v)}" for k, v in point.items())


def parse_run_name(name: str) -> tuple[dict[str, float], bool]:
    """(grid point, retrained?) of a run folder `run_name` made."""
    final = name.startswith(FINAL)
    parts = name.removeprefix(FINAL).split("_")
    return {k: float(v) for k, v in zip(parts[::2], parts[1::2])}, final


def _describe(point: dict[str, float]) -> str:
    return " ".join(f"{k}={_text(v)}" for k, v in point.items())


def grid_run(c: Setup, init: Any, data: Data, run_dir: Path, desc: str) -> tuple[dict[str, Any], Any]:
    """One grid point trained on the training part and scored on the held-out part: (its row, state)."""
    try:
        final, state = train_one(c, init, data.train_part, Scored(data.holdout, "val"), run_dir, desc)
    except loop.NonFiniteLoss as e:
        return {metrics.VAL_ACC: None, metrics.VAL_LOSS: None, "diverged": True, "error": str(e)}, None
    keep = {
        metrics.VAL_ACC: final[metrics.VAL_ACC],
        metrics.VAL_LOSS: final[metrics.VAL_LOSS],
        metrics.TRAIN_LOSS: final.get(metrics.TRAIN_LOSS),
    }
    return {**keep, "device_seconds": final["device_seconds"], "diverged": False}, state


def beats(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether a grid run is the new best: it did not diverge and has the higher held-out accuracy,
    ties going to the lower held-out loss (the fine-tuning and the VTAB grids alike)."""
    if row["diverged"]:
        return False
    key = lambda r: (r[metrics.VAL_ACC], -r[metrics.VAL_LOSS])
    return best is None or key(row) > key(best)


@dataclasses.dataclass
class Search:
    """A grid search's outcome: every row, the best point and row, its state, and the fitted start params."""

    grid: list[dict[str, Any]]
    point: dict[str, float]
    best: dict[str, Any]
    state: Any
    init: Any


def search(
    m: pretrained.Pretrained,
    points: list[dict[str, float]],
    make: Callable[[dict], Setup],
    data: Data,
    out: Path,
    label: str,
) -> Search:
    """Every point of a grid ({"lr": ...} or {"steps": ..., "lr": ...}) for model `m`, each a run under
    `out`/`run_name(point)` described as "<label> lr=..."; the best: the highest held-out accuracy, ties
    to the lower held-out loss. `make(point)` gives the point's (cached) setup; the start params are
    fitted once, at the first point."""
    grid, found, init = [], None, None
    for point in points:
        c = make(point)
        if init is None:  # the model's params with a new head at the fine-tuning resolution
            init = pretrained.fit(m.params, c.trainer.model, c.image_shape)
        row, state = grid_run(c, init, data, out / run_name(point), f"{label} {_describe(point)}")
        row = {**point, **row}
        grid.append(row)
        if beats(row, found and found[1]):
            found = (point, row, state)
        del state
    if found is None:
        raise RuntimeError(f"{label}: every run of the grid {points} diverged; try smaller learning rates")
    return Search(grid, *found, init)


def final_run(s: Search, c: Setup, data: Data, out: Path, label: str) -> dict[str, Any]:
    """The best point retrained from the same start on the whole training split and scored on the test
    split: {test/acc, test/loss, device_seconds}."""
    desc = f"{label} final {_describe(s.point)}"
    run_dir = out / run_name(s.point, final=True)
    final, _ = train_one(c, s.init, data.full, Scored(data.test, "test"), run_dir, desc)
    return {k: final[k] for k in (metrics.TEST_ACC, metrics.TEST_LOSS, "device_seconds")}


def _note_if_at_grid_edge(name: str, dataset: str, lr_grid, best_lr: float) -> bool:
    """Whether the best lr is the smallest or largest of a grid of several; prints a note when it is."""
    at_edge = len(lr_grid) > 1 and best_lr in (min(lr_grid), max(lr_grid))
    if at_edge:
        print(
            f"note: {name} on {dataset}: the best lr {best_lr:g} is at the edge of lr_grid {lr_grid}; "
            "a wider grid may do better"
        )
    return at_edge


def _finetune_one(
    m: pretrained.Pretrained, dataset: str, cfg: config.TransferConfig, data: Data, make, out: Path
) -> dict[str, Any]:
    """One model: the lr search, then the test score of the retrained (or best grid) run; its result."""
    label = f"{datasets.metric_name(dataset)} {m.name}"
    s = search(m, [{"lr": lr} for lr in cfg.lr_grid], make, data, out / m.name, label)
    best_lr = s.best["lr"]
    at_edge = _note_if_at_grid_edge(m.name, dataset, cfg.lr_grid, best_lr)
    c = make({"lr": best_lr})
    if cfg.retrain:
        s.state = None  # free the grid run's state before the final run
        test = final_run(s, c, data, out / m.name, label)
        seconds = [test.pop("device_seconds")]
    else:
        test, seconds = score(c, s.state.params, data.test, "test"), []
    seconds += [g.get("device_seconds") for g in s.grid]
    return {
        "dataset": dataset,
        "model": m.name,
        "resolution": c.image_shape[0],
        "steps": c.spec.total_steps,
        "batch_size": c.spec.batch_size,
        "grid": s.grid,
        "best_lr": best_lr,
        "best_lr_at_grid_edge": at_edge,
        "retrained": cfg.retrain,
        "train_images": len(data.full) if cfg.retrain else len(data.train_part),
        "holdout_images": len(data.holdout),
        "test_images": len(data.test),
        **test,
        # Training device-seconds of the grid runs and the final run (kept across resumes).
        "device_seconds": sum(x for x in seconds if x is not None),
    }


def finetune_dir(out_dir: str | Path, dataset: str) -> Path:
    """Where a transfer run keeps the fine-tuning runs on `dataset`: finetune/<its safe token>."""
    return Path(out_dir) / "finetune" / datasets.metric_name(dataset)


def finetune(
    models: list[pretrained.Pretrained], dataset: str, cfg: config.TransferConfig, out_dir: str | Path, mesh
) -> dict[str, dict[str, Any]]:
    """Fine-tune each model on `dataset` (runs under `out_dir`/<model>/): pick the lr on the held-out
    part, then retrain on the whole training split (or keep the best grid run) and score the test
    split. Returns {model name: result}."""
    train_name, test_name = datasets.finetune_splits(dataset)
    full = sources.load(dataset, train_name, cfg.data_dir, cfg.input)
    test = sources.load(dataset, test_name, cfg.data_dir, cfg.input)
    data = Data(full, *holdout_split(full, cfg.holdout_fraction), test)
    compiled: dict[float, Setup] = {}

    def make_for(pre: config.PretrainConfig):
        def make(point: dict[str, float]) -> Setup:
            if point["lr"] not in compiled:
                compiled[point["lr"]] = setup(pre, cfg, full.num_classes, point["lr"], mesh)
            return compiled[point["lr"]]

        return make

    return {m.name: _finetune_one(m, dataset, cfg, data, make_for(m.cfg), Path(out_dir)) for m in models}
