"""Pretraining: check -> data -> state -> loop -> cooldown branches -> summary, top to bottom.

`check(cfg)` is every check that needs disk, datasets or devices; `run(cfg, out_dir)` (last in
this file) calls it, then trains. The notebook cell in JupyterLab and the papermill batch run both
call `run`. A run folder holding checkpoints resumes from the newest readable one; batches are a
pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from vitscale import (
    allocator,
    build,
    checkpoints,
    checks,
    config,
    loop,
    metrics,
    optim,
    pretrained,
    runs,
    sharding,
)
from vitscale.data import datasets, sources
from vitscale.models import flops, vit


# ----------------------------------------------------------------------------- cooldown branches
def branch_name(branch: config.CooldownBranch) -> str:
    return f"cooldown_{branch.start}+{branch.steps}"


@dataclasses.dataclass(frozen=True)
class MainRun:
    """What a cooldown branch takes from the main run: its folder (the checkpoint at the branch's
    start), its mesh and head size, its batches and the evaluators of a trainer."""

    out: Path
    mesh: Any
    num_classes: int
    batches: Callable[[int], Iterator[dict]]
    make_evals: Callable[[loop.Trainer], loop.Evaluators]


def run_branch(cfg: config.PretrainConfig, branch: config.CooldownBranch, main: MainRun) -> dict[str, Any]:
    """A cooldown branch: from the main run's checkpoint at `start`, cool down linearly over `steps`."""
    out, batches = main.out, main.batches
    name = branch_name(branch)
    schedule = optim.cooldown_branch_schedule(
        cfg.lr,
        branch_start=branch.start,
        cooldown_steps=branch.steps,
        warmup_steps=cfg.warmup_steps,
        timescale=cfg.timescale,
    )
    trainer = build.trainer(cfg, main.mesh, main.num_classes, schedule)

    def from_main_run():
        mngr = checkpoints.manager(out / "ckpt", protect={branch.start})
        try:
            state, meta = checkpoints.restore_latest(mngr, trainer.abstract_state(), max_step=branch.start)
        finally:
            mngr.close()
        if state is None or int(state.step) != branch.start:
            raise RuntimeError(f"cooldown branch {name}: the main run has no checkpoint at step {branch.start}")
        return state, meta

    end = branch.start + branch.steps
    _, meta = loop.fit(
        trainer,
        build.loop_spec(cfg),
        out / "branches" / name,
        schedule=schedule,
        batches=batches,
        evaluators=main.make_evals(trainer),
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
    fwd = flops.forward_flops(model, build.image_shape(cfg))
    images_seen = cfg.total_steps * cfg.batch_size
    shape = build.image_shape(cfg)
    for b in branches:
        b["train_flops"] = flops.train_flops(model, shape, b["images_seen"])
    return {
        "kind": "pretrain",
        "name": cfg.name,
        "variant": cfg.variant,
        "parametrization": cfg.parametrization,
        "dataset": cfg.dataset,
        "num_classes": model.num_classes,  # the head's classes (the planner sizes its models with them)
        "train_examples": cfg.train_examples,
        "total_steps": cfg.total_steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "images_seen": images_seen,
        "num_params": flops.count_params(model, build.image_shape(cfg)),
        "forward_flops_per_image": fwd,
        "train_flops": flops.train_flops(model, shape, images_seen),
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
        **({"group_copies": meta["group_copies"]} if meta.get("group_copies") else {}),  # trained with n-1 others
        "environment": runs.environment(),
    }


# ----------------------------------------------------------------------------- entry points
def load_data(cfg: config.PretrainConfig):
    """(train, test, val or None, pipeline): the splits a run reads, in memory or streamed (cfg.input)."""
    train = sources.load(cfg.dataset, cfg.train_split_name(), cfg.data_dir, cfg.input)
    test = sources.load(cfg.dataset, cfg.test_split, cfg.data_dir, cfg.input)
    val = sources.load(cfg.dataset, cfg.val_split_name(), cfg.data_dir, cfg.input) if cfg.val_examples else None
    return train, test, val, build.pipeline(cfg)


def check(cfg: config.PretrainConfig) -> None:
    """Everything about `cfg` that needs disk, datasets or devices, before any compute: the splits
    exist, train_examples fits its split, few-shot pools have enough images per class, the mesh and
    batch fit the devices. Raises one ConfigError listing every problem."""
    problems: list[config.Problem] = []
    n_train = checks.split_size(problems, "dataset", cfg.dataset, cfg.train_split, cfg.data_dir)
    if n_train is not None and cfg.val_examples >= n_train:
        problems.append(
            config.Problem(
                "val_examples",
                f"{cfg.val_examples} leaves nothing to train on in the {n_train} examples of "
                f"{cfg.dataset}:{cfg.train_split} (accepted: 0 to {n_train - 1})",
            )
        )
    elif n_train is not None and cfg.train_examples and cfg.train_examples > n_train - cfg.val_examples:
        held = f" less the {cfg.val_examples} held out (val_examples)" if cfg.val_examples else ""
        problems.append(
            config.Problem(
                "train_examples",
                f"{cfg.train_examples} exceeds the {n_train} examples of {cfg.dataset}:{cfg.train_split}{held} "
                f"(accepted: 1 to {n_train - cfg.val_examples}, or null for all)",
            )
        )
    checks.split_size(problems, "test_split", cfg.dataset, cfg.test_split, cfg.data_dir)
    if n_train is not None:
        pp = {"pp_train": cfg.pp_train, "pp_eval": cfg.pp_eval}
        checks.pp_shapes(problems, pp, cfg.dataset, cfg.data_dir, cfg.image_size, cfg.channels)
        checks.input_path(problems, "input", cfg.dataset, cfg.train_split, cfg.data_dir, cfg.input)
    checks.fewshot_pools(problems, "fewshot_datasets", cfg.fewshot_datasets, cfg.fewshot_shots, cfg.data_dir, cfg.input)
    checks.devices(problems, cfg.mesh, {"batch_size": cfg.batch_size}, cfg.grad_chains)
    if cfg.init_from:
        try:  # names and shapes against the model, from the file's headers (numpy)
            pretrained.check_file(cfg.init_from, cfg.model_spec(), field="init_from")
        except config.ConfigError as e:
            problems += e.problems
    checks.raise_problems(problems)


def run(cfg: config.PretrainConfig, out_dir: str | Path, *, checked: bool = False) -> dict[str, Any]:
    """`_run` as the one writer of `out_dir` (runs.lock; a notebook started by `vitscale run` writes
    under its lock); the other processes of a multi-host run write under process 0's. `checked`: the
    caller has run `check(cfg)` on these values (notebooks.check), so it is not run again."""
    sharding.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    if jax.process_index():
        return _run(cfg, out_dir, checked)
    with runs.writer(out_dir):
        return _run(cfg, out_dir, checked)


def _run(cfg: config.PretrainConfig, out_dir: str | Path, checked: bool) -> dict[str, Any]:
    """Pretrain as `cfg` says into `out_dir`, resuming from its checkpoints; returns the summary."""
    out = Path(out_dir)  # (run joined the multi-host job, before anything touched a backend)
    if not checked:
        check(cfg)
    runs.claim(out, cfg)
    t0 = time.time()

    # 1. Data: the training subset and the test split, in memory or streamed (cfg.input).
    train, test, val, pipe = load_data(cfg)

    # 2. Compiled steps on the mesh.
    mesh = sharding.make_mesh(cfg.mesh)
    if advice := allocator.check(mesh.devices.flat[0].platform):
        warnings.warn(advice, stacklevel=2)
    trainer = build.trainer(cfg, mesh, train.num_classes)
    make_evals = lambda t: build.evaluators_of(cfg, t, test, pipe, val)
    batches = build.batches(cfg, train, pipe)

    # 3. The main run, keeping the checkpoints the branches start from.
    starts = {b.start for b in cfg.cooldown_branches}
    spec = build.loop_spec(cfg)
    _, meta = loop.fit(
        trainer,
        spec,
        out,
        schedule=build.schedule(cfg),
        batches=batches,
        evaluators=make_evals(trainer),
        desc=cfg.name,
        protect=starts,
        params_text=config.dump(cfg),
        start=(lambda: pretrained.start_from_file(cfg, trainer)) if cfg.init_from else None,
    )

    # 4. Cooldown branches, each from its start checkpoint.
    main = MainRun(out, mesh, train.num_classes, batches, make_evals)
    branches = [run_branch(cfg, b, main) for b in cfg.cooldown_branches]

    # 5. The summary.
    records = runs.read_metrics(out / "metrics.jsonl")
    summary = make_summary(cfg, trainer.model, records, t0, branches, meta)
    summary.update(loop.perf_summary(trainer, records, meta))  # mfu, and the peak and kernel behind it
    summary["train_examples"] = len(train)  # the data axis, resolved when the parameter is None
    summary["input"] = {
        "train": "stream" if isinstance(train, sources.Source) else "memory",
        "test": "stream" if isinstance(test, sources.Source) else "memory",
        "skipped_files": len(datasets.skipped_files(cfg.dataset, cfg.data_dir)),  # unreadable images of a folder
    }
    runs.write_json(out / "summary.json", summary)
    return summary
