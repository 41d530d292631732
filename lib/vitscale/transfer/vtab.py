"""VTAB-1k (`vtab_tasks`; the task table and its splits: vitscale.data.vtab): per task and seed,
fine-tuning on train800 over vtab_steps x vtab_lr_grid (transfer.finetune's one grid search), the pick
on val200, the retrain on train800val200, test accuracy; the means over tasks and groups
(evaluators.vtab). Runs live under <transfer run>/vtab/<task>/<model>/seed_<seed>/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vitscale import config, metrics, pretrained
from vitscale.data import datasets
from vitscale.data import vtab as vtab_data
from vitscale.evaluators import vtab
from vitscale.transfer import finetune

VTAB_ALL = "vtab-1k"  # vtab_tasks shorthand for the 19 tasks


def task_names(cfg: config.TransferConfig) -> list[str]:
    """vtab_tasks with the "vtab-1k" shorthand spelled out (task order kept, no repeats)."""
    names = [n for name in cfg.vtab_tasks for n in (vtab_data.TASKS if name == VTAB_ALL else [name])]
    return list(dict.fromkeys(names))


def check(problems: list[config.Problem], cfg: config.TransferConfig) -> None:
    """Every VTAB task is known and its builder prepared in data_dir with splits of the 1k sizes."""
    for name in task_names(cfg):
        try:
            task = vtab_data.get(name, cfg.data_dir)
            sizes = vtab_data.counts(vtab_data.builder(task, cfg.data_dir))
        except KeyError as e:
            problems.append(config.Problem("vtab_tasks", e.args[0]))
            continue
        except (ValueError, FileNotFoundError) as e:  # NotPrepared, or a stand-in's unknown dataset
            problems.append(config.Problem("vtab_tasks", str(e)))
            continue
        for split in vtab_data.SPLITS:
            try:
                n = vtab_data.split_size(task, split, sizes)
            except (ValueError, KeyError, AssertionError) as e:
                n, why = None, str(e)
            else:
                why = f"has {n} images"
            if n is None or n != vtab_data.SIZES.get(split, n) or n == 0:
                problems.append(
                    config.Problem(
                        "vtab_tasks",
                        f"{name}: split {split} ({vtab_data.split_expr(task, split, sizes)}) {why}; it needs "
                        f"{vtab_data.SIZES.get(split, 'some')} (a stand-in: 1000 training images and a test split)",
                    )
                )


def _setups(cfg: config.TransferConfig, mesh):
    """(model, task, seed) -> a grid point's setup maker; setups are compiled once and shared by the
    tasks and models of one shape and class count."""
    compiled: dict = {}

    def for_one(m: pretrained.Pretrained, task: vtab_data.Task, seed: int):
        def make(point: dict[str, float]) -> finetune.Setup:
            steps, lr = point["steps"], point["lr"]
            key = (m.cfg.variant, m.cfg.image_size, task.num_classes, steps, lr, seed)
            if key not in compiled:
                run_cfg = cfg.model_copy(
                    update={
                        "finetune_steps": steps,
                        "warmup_steps": cfg.vtab_warmup_steps,
                        "seed": seed,
                        "eval_every": steps,
                        "log_every": min(cfg.log_every, steps),
                    }
                )
                compiled[key] = finetune.setup(m.cfg, run_cfg, task.num_classes, lr, mesh)
            return compiled[key]

        return make

    return for_one


def one_seed(
    m: pretrained.Pretrained, data: finetune.Data, points: list[dict], make, out: Path, label: str
) -> dict[str, Any]:
    """One task, one seed (in `make`): every (steps, lr) point trained on train800 and scored on val200;
    the best (val accuracy, ties to the lower val loss) retrained from the same start on train800val200
    and scored on test. Runs are loop.fit runs under `out`, skipped when run again."""
    s = finetune.search(m, points, make, data, out, label)
    final = finetune.final_run(s, make(s.point), data, out, label)
    seconds = [final["device_seconds"], *(g.get("device_seconds") for g in s.grid)]
    return {
        "grid": s.grid,
        "best_steps": s.point["steps"],
        "best_lr": s.point["lr"],
        metrics.TEST_ACC: final[metrics.TEST_ACC],
        metrics.TEST_LOSS: final[metrics.TEST_LOSS],
        "test_images": len(data.test),
        "device_seconds": sum(x for x in seconds if x is not None),
    }


def evaluate(models: list[pretrained.Pretrained], cfg: config.TransferConfig, out: Path, mesh) -> dict[str, Any]:
    """{model: {"tasks": {task: {group, standin, test/acc (mean over seeds), test/acc_std, seeds: [...]}},
    "summary": {mean, natural, specialized, structured[, standin]}}} (empty without vtab_tasks)."""
    names = task_names(cfg)
    if not names:
        return {}
    res = finetune.resolution(cfg, models[0].cfg)
    results: dict[str, dict[str, Any]] = {m.name: {} for m in models}
    setups = _setups(cfg, mesh)
    points = [{"steps": steps, "lr": lr} for steps in cfg.vtab_steps for lr in cfg.vtab_lr_grid]
    for name in names:
        task = vtab_data.get(name, cfg.data_dir)
        t0 = time.perf_counter()
        splits = {s: vtab_data.load(task, s, cfg.data_dir, res) for s in vtab_data.SPLITS}
        print(f"VTAB {task.name}: {', '.join(f'{s} {len(x)}' for s, x in splits.items())} "
              f"(loaded in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
        data = finetune.Data(splits["train800val200"], splits["train800"], splits["val200"], splits["test"])
        folder = out / "vtab" / datasets.metric_name(task.name.removeprefix(vtab_data.STANDIN))
        for m in models:
            per_seed = [
                {"seed": seed, **one_seed(m, data, points, setups(m, task, seed), folder / m.name / f"seed_{seed}",
                                          f"{task.name} {m.name} seed {seed}")}
                for seed in range(cfg.vtab_seeds)
            ]  # fmt: skip
            accs = [r[metrics.TEST_ACC] for r in per_seed]
            results[m.name][task.name] = {
                "group": task.group,
                "standin": task.standin,
                "builder": task.builder,
                metrics.TEST_ACC: float(np.mean(accs)),
                "test/acc_std": float(np.std(accs)),
                "seeds": per_seed,
            }
    return {
        model: {"tasks": tasks, "summary": vtab.summarize({t: r[metrics.TEST_ACC] for t, r in tasks.items()})}
        for model, tasks in results.items()
    }
