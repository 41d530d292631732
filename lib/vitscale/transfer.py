"""Transfer: how good are a pretrained model's representations downstream?

`check(cfg)` reads what the parameters refer to (the run folder, the datasets, the devices);
`run(cfg, out_dir)` (notebooks/transfer.ipynb, `vitscale run parameters/transfer/<name>.yaml`)
then, for the model `pretrained` names (a pretraining run's newest checkpoint, or a random init),
and with `compare_random` also for a random init of the same shape:

1. few-shot linear evaluation (vitscale.evaluators, the paper's protocol) on each of
   `fewshot_datasets`, for every shot count and seed, from frozen pre_logits at the pretraining
   resolution;
2. fine-tuning (vitscale.finetune) on each of `finetune_datasets` at `finetune_resolution`;
3. VTAB-1k (`vtab_tasks`, evaluators/vtab_data.py): per task and seed, fine-tuning on train800 over
   vtab_steps x vtab_lr_grid, the pick on val200, the retrain on train800val200, test accuracy;
4. ImageNet-ReaL, ImageNet-v2 and ObjectNet (`imagenet_evals`) of the ImageNet-1k classifier: the model
   fine-tuned on imagenet2012 in step 2, else `pretrained` itself (a 1000-class head).

summary.json ends with `paper_table`: the columns of the paper's tables per model (ImageNet fine-tune,
10-shot ImageNet, ReaL, v2, ObjectNet, VTAB mean and groups), "not prepared" where the dataset's
files are absent from data_dir and "not run" where they are there but the parameters did not ask.

The run folder gets params.yaml first, metrics.jsonl and ckpt/ of every fine-tuning run under
finetune/, and summary.json at the end. Running again skips fine-tuning runs that finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds

from vitscale import (
    build,
    checkpoints,
    checks,
    config,
    fewshot,
    finetune,
    flops,
    loop,
    metrics,
    pretrained,
    runs,
    sharding,
    weights,
)
from vitscale.data import datasets, pipeline, sources
from vitscale.data import vtab as vtab_data
from vitscale.evaluators import classify, imagenet_v2, objectnet, real, vtab
from vitscale.evaluators import fewshot as fewshot_evaluator

IMAGENET = "imagenet2012"
VTAB_ALL = "vtab-1k"  # vtab_tasks shorthand for the 19 tasks


def pretrain_config(cfg: config.TransferConfig) -> config.PretrainConfig:
    """The pretrained model's parameters: the run folder's params.yaml, `random_model`, or (a .npz
    file) `pretrained_model`."""
    if cfg.pretrained == config.RANDOM:
        return config.PretrainConfig.from_model(cfg.random_model or config.ModelSpec())
    if cfg.pretrained.endswith(config.NPZ):
        return config.PretrainConfig.from_model(cfg.pretrained_model)
    return pretrained.read_pretrain_config(runs.find_run(cfg.pretrained))


def check(cfg: config.TransferConfig) -> config.PretrainConfig:
    """Everything that needs disk, datasets or devices, before any compute: the pretraining run
    folder, the fine-tuning resolution against its patch size, few-shot pools against the shot
    counts, the fine-tuning splits against holdout_fraction, the batch against the devices.
    Returns the pretrained model's parameters; raises one ConfigError listing every problem."""
    problems: list[config.Problem] = []
    try:
        pre = pretrain_config(cfg)
    except config.ConfigError as e:
        problems += e.problems
        pre = None
    if pre is not None and cfg.pretrained.endswith(config.NPZ):
        try:  # names and shapes against the model, from the file's headers (numpy)
            weights.check_file(cfg.pretrained, pre.model_spec())
        except config.ConfigError as e:
            problems += e.problems
    if pre is not None:
        patch, res = pre.shape.patch_size, finetune.resolution(cfg, pre)
        if res % patch:
            problems.append(
                config.Problem(
                    "finetune_resolution",
                    f"{res} is not divisible by the patch size {patch} of the pretrained model (variant "
                    f"{pre.variant!r}); accepted: a multiple of {patch}",
                )
            )
    checks.fewshot_pools(problems, "fewshot_datasets", cfg.fewshot_datasets, cfg.fewshot_shots, cfg.data_dir, cfg.input)
    for name in cfg.finetune_datasets:
        train_split, test_split = datasets.finetune_splits(name)
        n = checks.split_size(problems, "finetune_datasets", name, train_split, cfg.data_dir)
        checks.split_size(problems, "finetune_datasets", name, test_split, cfg.data_dir)
        if n is not None:
            checks.input_path(problems, "input", name, train_split, cfg.data_dir, cfg.input)
        if n is not None and pre is not None:
            pp = {"pp_finetune": cfg.pp_finetune, "pp_finetune_eval": cfg.pp_finetune_eval}
            checks.pp_shapes(problems, pp, name, cfg.data_dir, finetune.resolution(cfg, pre), pre.channels)
        if n is not None and not 0 < round(n * cfg.holdout_fraction) < n:
            problems.append(
                config.Problem(
                    "holdout_fraction",
                    f"{cfg.holdout_fraction} of the {n} training images of {name!r} leaves an empty held-out or "
                    "training part",
                )
            )
    check_vtab(problems, cfg)
    check_imagenet_evals(problems, cfg)
    checks.devices(problems, cfg.mesh, {"finetune_batch_size": cfg.finetune_batch_size})
    checks.raise_problems(problems)
    return pre


def vtab_task_names(cfg: config.TransferConfig) -> list[str]:
    """vtab_tasks with the "vtab-1k" shorthand spelled out (task order kept, no repeats)."""
    names = [n for name in cfg.vtab_tasks for n in (vtab_data.TASKS if name == VTAB_ALL else [name])]
    return list(dict.fromkeys(names))


def check_vtab(problems: list[config.Problem], cfg: config.TransferConfig) -> None:
    """Every VTAB task is known and its builder prepared in data_dir with splits of the 1k sizes."""
    for name in vtab_task_names(cfg):
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


def prepared(name: str, data_dir: str | None) -> bool:
    """Whether a TFDS dataset has prepared files in data_dir (metadata only)."""
    try:
        return bool(tfds.builder(name, data_dir=data_dir or datasets.default_data_dir()).info.splits)
    except Exception:  # noqa: BLE001 - unknown name, version or unreadable files: not prepared
        return False


def check_imagenet_evals(problems: list[config.Problem], cfg: config.TransferConfig) -> None:
    """The datasets imagenet_evals names are prepared, and the ObjectNet folder has its mapping files."""
    if "real" in cfg.imagenet_evals and not prepared(real.DATASET, cfg.data_dir):
        problems.append(
            config.Problem(
                "imagenet_evals",
                f"real: {real.DATASET} is not prepared in data_dir; prepare it with `{real.PREPARE}`",
            )
        )
    if "v2" in cfg.imagenet_evals and not prepared(imagenet_v2.dataset(cfg.imagenet_v2_variant), cfg.data_dir):
        problems.append(
            config.Problem(
                "imagenet_evals",
                f"v2: {imagenet_v2.dataset(cfg.imagenet_v2_variant)} is not prepared in data_dir; prepare it with "
                f"`{imagenet_v2.prepare_command(cfg.imagenet_v2_variant)}`",
            )
        )
    if "objectnet" in cfg.imagenet_evals and cfg.objectnet_dir and (lacks := objectnet.missing(cfg.objectnet_dir)):
        problems.append(
            config.Problem(
                "objectnet_dir",
                f"{cfg.objectnet_dir} is not ObjectNet as distributed: missing {', '.join(lacks)}; accepted: the "
                "objectnet-1.0 folder (images/ and mappings/ with "
                f"{', '.join(m.split('/')[-1] for m in objectnet.MAPPINGS)})",
            )
        )


def load_models(cfg: config.TransferConfig, mesh) -> list[pretrained.Pretrained]:
    """The model `pretrained` names, then (compare_random) a random init of the same shape."""
    if cfg.pretrained == config.RANDOM:
        return [pretrained.random_init(pretrain_config(cfg), mesh, seed=cfg.seed)]
    if cfg.pretrained.endswith(config.NPZ):
        models = [pretrained.load_npz(cfg.pretrained, pretrain_config(cfg), mesh)]
    else:
        models = [pretrained.load_run(cfg.pretrained, mesh)]
    if cfg.compare_random:
        models.append(pretrained.random_init(models[0].cfg, mesh, seed=cfg.seed))
    return models


def fewshot_eval(
    models: list[pretrained.Pretrained], cfg: config.TransferConfig, mesh
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{model: {dataset: {"<k>shot": {mean, std, per_seed}}}} from frozen features at the pretraining resolution."""
    if not cfg.fewshot_datasets:
        return {}
    pre = models[0].cfg
    evaluator = fewshot_evaluator.FewShotEvaluator(
        cfg.fewshot_datasets,
        build.pipeline(pre),  # the pretraining's evaluation ops, at its resolution
        shots=tuple(cfg.fewshot_shots),
        seeds=tuple(range(cfg.fewshot_seeds)),
        l2=cfg.fewshot_l2,
        data_dir=cfg.data_dir,
        batch_size=cfg.eval_batch_size,
        mode=cfg.input,
    )
    results = {}
    for m in models:
        t0 = time.perf_counter()
        results[m.name] = evaluator.evaluate(m.features, mesh)
        print(f"few-shot {m.name}: {', '.join(cfg.fewshot_datasets)} in {time.perf_counter() - t0:.0f} s")
    return results


# ----------------------------------------------------------------------------- VTAB-1k
def _vtab_grid_run(
    c: finetune._Compiled,
    run_cfg: config.TransferConfig,
    init: Any,
    splits: dict[str, sources.Split],
    run_dir: Path,
    desc: str,
    steps: int,
    lr: float,
) -> dict[str, Any]:
    """One (steps, lr) of the VTAB grid trained on train800 and scored on val200: its grid row."""
    row: dict[str, Any] = {"steps": steps, "lr": lr}
    try:
        final, _ = finetune.train_one(c, run_cfg, init, splits["train800"], splits["val200"], "val", run_dir, desc=desc)
        row.update({k: final[k] for k in (metrics.VAL_ACC, metrics.VAL_LOSS)} | {"diverged": False})
        row["device_seconds"] = final["device_seconds"]
    except loop.NonFiniteLoss as e:
        row.update({metrics.VAL_ACC: None, metrics.VAL_LOSS: None, "diverged": True, "error": str(e)})
    return row


def _vtab_search(
    m: pretrained.Pretrained,
    task: vtab_data.Task,
    splits: dict[str, sources.Split],
    cfg: config.TransferConfig,
    seed: int,
    out: Path,
    setup,
) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """Every (steps, lr) of the grid: (grid rows, best row, the fitted start params). Best: the highest
    val accuracy; ties go to the lower val loss."""
    grid, best, init = [], None, None
    for steps in cfg.vtab_steps:
        for lr in cfg.vtab_lr_grid:
            c, run_cfg = setup(steps, lr)
            if init is None:
                init = pretrained.fit(m.params, c.trainer.model, c.image_shape)
            row = _vtab_grid_run(
                c, run_cfg, init, splits, out / f"steps_{steps}_lr_{lr:g}",
                f"{task.name} {m.name} seed {seed} steps={steps} lr={lr:g}", steps, lr,
            )  # fmt: skip
            grid.append(row)
            if finetune.beats(row, best):
                best = row
    if best is None:
        raise RuntimeError(f"VTAB {task.name} {m.name} seed {seed}: every run of the grid diverged")
    return grid, best, init


def vtab_one(
    m: pretrained.Pretrained,
    task: vtab_data.Task,
    splits: dict[str, sources.Split],
    cfg: config.TransferConfig,
    seed: int,
    out: Path,
    mesh,
    compiled: dict,
) -> dict[str, Any]:
    """One task, one seed: every (steps, lr) of the grid trained on train800 and scored on val200; the
    best (val accuracy, ties to the lower val loss) retrained from the same start on train800val200 and
    scored on test. Runs are loop.fit runs under `out`, skipped when run again."""

    def setup(steps: int, lr: float):
        run_cfg = cfg.model_copy(
            update={
                "finetune_steps": steps,
                "warmup_steps": cfg.vtab_warmup_steps,
                "seed": seed,
                "eval_every": steps,
                "log_every": min(cfg.log_every, steps),
            }
        )
        key = (m.cfg.variant, m.cfg.image_size, task.num_classes, steps, lr, seed)
        if key not in compiled:
            compiled[key] = finetune._compile(m.cfg, run_cfg, task.num_classes, lr, mesh)
        return compiled[key], run_cfg

    grid, best, init = _vtab_search(m, task, splits, cfg, seed, out, setup)
    c, run_cfg = setup(best["steps"], best["lr"])
    final, _ = finetune.train_one(
        c, run_cfg, init, splits["train800val200"], splits["test"], "test",
        out / f"final_steps_{best['steps']}_lr_{best['lr']:g}",
        desc=f"{task.name} {m.name} seed {seed} final steps={best['steps']} lr={best['lr']:g}",
    )  # fmt: skip
    seconds = [final["device_seconds"], *(g.get("device_seconds") for g in grid)]
    return {
        "seed": seed,
        "grid": grid,
        "best_steps": best["steps"],
        "best_lr": best["lr"],
        "test/acc": final["test/acc"],
        "test/loss": final["test/loss"],
        "test_images": len(splits["test"]),
        "device_seconds": sum(x for x in seconds if x is not None),
    }


def vtab_eval(models: list[pretrained.Pretrained], cfg: config.TransferConfig, out: Path, mesh) -> dict[str, Any]:
    """{model: {"tasks": {task: {group, standin, test/acc (mean over seeds), test/acc_std, seeds: [...]}},
    "summary": {mean, natural, specialized, structured[, standin]}}} (empty without vtab_tasks)."""
    names = vtab_task_names(cfg)
    if not names:
        return {}
    res = finetune.resolution(cfg, models[0].cfg)
    results: dict[str, dict[str, Any]] = {m.name: {} for m in models}
    compiled: dict = {}
    for name in names:
        task = vtab_data.get(name, cfg.data_dir)
        t0 = time.perf_counter()
        splits = {s: vtab_data.load(task, s, cfg.data_dir, res) for s in vtab_data.SPLITS}
        print(f"VTAB {task.name}: {', '.join(f'{s} {len(x)}' for s, x in splits.items())} "
              f"(loaded in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
        folder = out / "vtab" / datasets.metric_name(task.name.removeprefix(vtab_data.STANDIN))
        for m in models:
            per_seed = [
                vtab_one(m, task, splits, cfg, seed, folder / m.name / f"seed_{seed}", mesh, compiled)
                for seed in range(cfg.vtab_seeds)
            ]
            accs = [r["test/acc"] for r in per_seed]
            results[m.name][task.name] = {
                "group": task.group,
                "standin": task.standin,
                "builder": task.builder,
                "test/acc": float(np.mean(accs)),
                "test/acc_std": float(np.std(accs)),
                "seeds": per_seed,
            }
    return {
        model: {"tasks": tasks, "summary": vtab.summarize({t: r["test/acc"] for t, r in tasks.items()})}
        for model, tasks in results.items()
    }


# ----------------------------------------------------------------------------- ImageNet-ReaL, v2, ObjectNet
def imagenet_classifier(m: pretrained.Pretrained, cfg: config.TransferConfig, fine: dict, out: Path, mesh):
    """(logits fn, params, evaluation pipeline) of the ImageNet-1k classifier of model `m`: its
    fine-tuned imagenet2012 run of this transfer run (restored from its checkpoint), else `pretrained`
    itself when its head has 1000 classes."""
    if IMAGENET in fine:
        result = fine[IMAGENET][m.name]
        c = finetune._compile(m.cfg, cfg, 1000, result["best_lr"], mesh)
        run = f"final_lr_{result['best_lr']:g}" if result["retrained"] else f"lr_{result['best_lr']:g}"
        mngr = checkpoints.manager(out / "finetune" / IMAGENET / m.name / run / "ckpt", keep=1)
        state, _ = checkpoints.restore_latest(mngr, c.trainer.abstract_state(), move_aside=False)
        if state is None:
            raise RuntimeError(f"the imagenet2012 fine-tuning of {m.name} left no readable checkpoint in {run}")
        return classify.logits_fn(c.trainer), state.params, c.pipe
    head = m.params["head"]["kernel"].shape[-1]
    if head != 1000:
        raise config.ConfigError(
            [config.Problem("imagenet_evals", f"{m.source} has a {head}-class head; ImageNet-1k needs 1000")]
        )
    res = m.cfg.image_size
    eval_ops = tuple(cfg.pp_finetune_eval) if cfg.pp_finetune_eval else None
    pipe = pipeline.Pipeline(image_size=res, channels=m.cfg.channels, eval_ops=eval_ops)
    return classify.logits_fn(m.trainer), m.params, pipe


def imagenet_eval(
    models: list[pretrained.Pretrained], cfg: config.TransferConfig, fine: dict, out: Path, mesh
) -> dict[str, dict[str, Any]]:
    """{model: {"real": {...}, "v2": {...}, "objectnet": {...}}} for the evaluations imagenet_evals names."""
    if not cfg.imagenet_evals:
        return {}
    results = {}
    devices = int(mesh.devices.size)
    batch = -(-cfg.eval_batch_size // devices) * devices  # whole batches split over the devices
    for m in models if IMAGENET in fine else models[:1]:
        logits, params, pipe = imagenet_classifier(m, cfg, fine, out, mesh)
        r: dict[str, Any] = {}
        if "real" in cfg.imagenet_evals:
            r["real"] = real.evaluate(logits, params, pipe, mesh, data_dir=cfg.data_dir, batch_size=batch)
        if "v2" in cfg.imagenet_evals:
            r["v2"] = imagenet_v2.evaluate(
                logits, params, pipe, mesh, variant=cfg.imagenet_v2_variant, data_dir=cfg.data_dir, batch_size=batch
            )
            r["v2"]["variant"] = cfg.imagenet_v2_variant
        if "objectnet" in cfg.imagenet_evals:
            r["objectnet"] = objectnet.evaluate(logits, params, pipe, mesh, path=cfg.objectnet_dir, batch_size=batch)
        results[m.name] = r
        print(f"ImageNet evaluations {m.name}: " + ", ".join(f"{k} {v['acc']:.2%}" for k, v in r.items()))
    return results


# ----------------------------------------------------------------------------- the paper's table
NOT_PREPARED, NOT_RUN = "not prepared", "not run"
PAPER_COLUMNS = (
    "ImageNet fine-tune",
    "ImageNet 10-shot",
    "ImageNet-ReaL",
    "ImageNet-v2",
    "ObjectNet",
    "VTAB-1k mean",
    "VTAB natural",
    "VTAB specialized",
    "VTAB structured",
)


def column_status(cfg: config.TransferConfig) -> dict[str, str]:
    """What an empty cell says: "not prepared" where the column's dataset has no files in data_dir (or,
    for ObjectNet, no usable objectnet_dir), else "not run"."""
    imagenet = NOT_RUN if prepared(IMAGENET, cfg.data_dir) else NOT_PREPARED
    usable = cfg.objectnet_dir is not None and not objectnet.missing(cfg.objectnet_dir)
    vtab_ready = True
    for task in vtab_data.TASKS.values():
        try:
            vtab_data.builder(task, cfg.data_dir)
        except (FileNotFoundError, ValueError, AssertionError):
            vtab_ready = False
            break
    status = {
        "ImageNet fine-tune": imagenet,
        "ImageNet 10-shot": imagenet,
        "ImageNet-ReaL": NOT_RUN if prepared(real.DATASET, cfg.data_dir) else NOT_PREPARED,
        "ImageNet-v2": NOT_RUN
        if prepared(imagenet_v2.dataset(cfg.imagenet_v2_variant), cfg.data_dir)
        else NOT_PREPARED,
        "ObjectNet": NOT_RUN if usable else NOT_PREPARED,
    }
    status.update({c: NOT_RUN if vtab_ready else NOT_PREPARED for c in PAPER_COLUMNS[5:]})
    return status


def paper_table(
    models: list[pretrained.Pretrained], cfg: config.TransferConfig, few: dict, fine: dict, vt: dict, imnet: dict
) -> dict[str, dict[str, float | str]]:
    """{model: {column: accuracy or why not}} in the layout of the paper's tables; stand-in VTAB tasks
    (not VTAB) get their own "VTAB stand-ins (not VTAB)" column when run."""
    status = column_status(cfg)
    table = {}
    for m in models:
        row: dict[str, float | str] = dict(status)
        if IMAGENET in fine:
            row["ImageNet fine-tune"] = fine[IMAGENET][m.name]["test/acc"]
        shot10 = few.get(m.name, {}).get(IMAGENET, {}).get("10shot")
        if shot10:
            row["ImageNet 10-shot"] = shot10["mean"]
        r = imnet.get(m.name, {})
        for key, column in (("real", "ImageNet-ReaL"), ("v2", "ImageNet-v2"), ("objectnet", "ObjectNet")):
            if key in r:
                row[column] = r[key]["acc"]
        summary = vt.get(m.name, {}).get("summary", {})
        for key, column in zip(("mean", *vtab_data.GROUPS), PAPER_COLUMNS[5:]):
            if summary.get(key) is not None:
                row[column] = summary[key]
        if summary.get("standin") is not None:
            row["VTAB stand-ins (not VTAB)"] = summary["standin"]
        table[m.name] = row
    return table


def _final_metrics(
    models: list[pretrained.Pretrained], few: dict, fine: dict, vt: dict, imnet: dict
) -> dict[str, float]:
    """Flat metrics of every model for summary.json: the first one's unprefixed, the others' under "<name>/"."""
    primary = models[0].name
    final: dict[str, float] = {}
    for m in models:
        prefix = "" if m.name == primary else f"{m.name}/"
        for name, result in few.get(m.name, {}).items():
            final.update({prefix + k: v for k, v in fewshot.flatten(name, result).items()})
        for name, by_model in fine.items():
            final[prefix + metrics.finetune(name)] = by_model[m.name][metrics.TEST_ACC]
        for task, r in vt.get(m.name, {}).get("tasks", {}).items():
            final[prefix + metrics.vtab(datasets.metric_name(task.removeprefix(vtab_data.STANDIN)))] = r[
                metrics.TEST_ACC
            ]
        for key, value in vt.get(m.name, {}).get("summary", {}).items():
            if value is not None:
                final[prefix + metrics.vtab(key)] = value
        for key, r in imnet.get(m.name, {}).items():
            final[prefix + metrics.imagenet_eval(key)] = r["acc"]
    return final


def make_summary(
    cfg: config.TransferConfig,
    models: list[pretrained.Pretrained],
    few: dict,
    fine: dict,
    t0: float,
    mesh,
    vt: dict | None = None,
    imnet: dict | None = None,
) -> dict[str, Any]:
    """Everything a reader needs: the source model, few-shot and fine-tuning results per model, and
    flat `final` metrics (the model `pretrained` names unprefixed, the random baseline under random/).
    Datasets are named by their safe token everywhere (`datasets.metric_name`: `folder_<name>` for a
    folder), as in the metric names and the fine-tuning folders; `datasets` maps each back."""
    pre = models[0].cfg
    few = {m: {datasets.metric_name(n): r for n, r in by_dataset.items()} for m, by_dataset in few.items()}
    fine = {datasets.metric_name(n): by_model for n, by_model in fine.items()}
    final = _final_metrics(models, few, fine, vt or {}, imnet or {})
    wall = time.time() - t0
    devices = int(mesh.devices.size)
    source = Path(models[0].source) / "summary.json"  # the pretraining run's compute, for plots against it
    pre_summary = runs.read_json(source) if source.is_file() else {}
    model = models[0].trainer.model
    return {
        "kind": "transfer",
        "name": cfg.name,
        "pretrained": cfg.pretrained,
        "pretrained_dir": models[0].source,
        "pretrained_step": models[0].step,
        "weights": models[0].origin,  # where they came from: file, layout, variant (and prefix, scanned, step)
        "pretrain_images_seen": pre_summary.get("images_seen"),
        "pretrain_train_flops": pre_summary.get("train_flops"),
        "variant": pre.variant,
        "pretrain_dataset": pre.dataset,
        "pretrain_image_size": pre.image_size,
        "finetune_resolution": finetune.resolution(cfg, pre),
        "models": [m.name for m in models],
        "num_params": flops.count_params(model, build.image_shape(pre)),
        "datasets": {datasets.metric_name(n): n for n in [*cfg.fewshot_datasets, *cfg.finetune_datasets]},
        "fewshot": few,
        "finetune": fine,
        "vtab": vt or {},
        "imagenet_evals": imnet or {},
        "paper_table": paper_table(models, cfg, few, fine, vt or {}, imnet or {}),
        "final": final,
        "finetune_device_seconds": sum(r["device_seconds"] for by_model in fine.values() for r in by_model.values()),
        "wall_seconds_this_session": wall,
        "device_count": devices,
        "device_seconds_this_session": wall * devices,
        "environment": runs.environment(),
    }


def finetune_dir(out_dir: str | Path, dataset: str) -> Path:
    """Where a transfer run keeps the fine-tuning runs on `dataset`: finetune/<its safe token>."""
    return Path(out_dir) / "finetune" / datasets.metric_name(dataset)


def load_curves(out_dir: str | Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every fine-tuning run of a transfer run folder, as records: {dataset (its safe token), model,
    lr, final (the retrained run, else a grid run), records (its metrics.jsonl)}. `names`: the
    run's `finetune_datasets` (default: from its params.yaml), found where `run` wrote them."""
    if names is None:
        params = Path(out_dir) / "params.yaml"
        names = config.load_yaml(params).get("finetune_datasets", []) if params.is_file() else []
    curves = []
    for path in sorted(p for n in names for p in finetune_dir(out_dir, n).glob("*/*/metrics.jsonl")):
        dataset, model, run = path.parts[-4:-1]
        final = run.startswith("final_lr_")
        lr = float(run.removeprefix("final_lr_" if final else "lr_"))
        curves.append(
            {"dataset": dataset, "model": model, "lr": lr, "final": final, "records": runs.read_metrics(path)}
        )
    return curves


def run(cfg: config.TransferConfig, out_dir: str | Path) -> dict[str, Any]:
    """`_run` as the one writer of `out_dir` (runs.lock; a notebook started by `vitscale run` writes
    under its lock); the other processes of a multi-host run write under process 0's."""
    if jax.process_index():
        return _run(cfg, out_dir)
    with runs.writer(out_dir):
        return _run(cfg, out_dir)


def _run(cfg: config.TransferConfig, out_dir: str | Path) -> dict[str, Any]:
    """Few-shot evaluation and fine-tuning as `cfg` says, into `out_dir`; returns the summary."""
    out = Path(out_dir)
    if not config.is_checked(cfg):  # the caller (CLI, sweep, notebook cell) checked it already
        check(cfg)
    runs.claim(out, cfg)
    t0 = time.time()

    mesh = sharding.make_mesh(cfg.mesh)
    models = load_models(cfg, mesh)
    print("models: " + "; ".join(f"{m.name} ({m.source}, step {m.step})" for m in models))
    few = fewshot_eval(models, cfg, mesh)
    fine = {name: finetune.finetune(models, name, cfg, finetune_dir(out, name), mesh) for name in cfg.finetune_datasets}

    vt = vtab_eval(models, cfg, out, mesh)
    imnet = imagenet_eval(models, cfg, fine, out, mesh)

    summary = make_summary(cfg, models, few, fine, t0, mesh, vt, imnet)
    runs.write_json(out / "summary.json", summary)
    return summary
