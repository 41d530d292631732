"""Transfer: how good are a pretrained model's representations downstream?

`check(cfg)` reads what the parameters refer to (the run folder, the datasets, the devices);
`run(cfg, out_dir)` (notebooks/transfer.ipynb, `vitscale run parameters/transfer/<name>.yaml`)
then, for the model `pretrained` names (a pretraining run's newest checkpoint, or a random init),
and with `compare_random` also for a random init of the same shape:

1. few-shot linear evaluation (vitscale.evaluators.fewshot, the paper's protocol) on each of
   `fewshot_datasets`, for every shot count and seed, from frozen pre_logits at the pretraining
   resolution;
2. fine-tuning (transfer.finetune) on each of `finetune_datasets` at `finetune_resolution`;
3. VTAB-1k (transfer.vtab): per task and seed, fine-tuning on train800 over vtab_steps x
   vtab_lr_grid, the pick on val200, the retrain on train800val200, test accuracy;
4. the ImageNet evaluations `imagenet_evals` names (transfer.imagenet: ReaL, v2, ObjectNet) of the
   ImageNet-1k classifier: the model fine-tuned on imagenet2012 in step 2, else `pretrained` itself.

summary.json ends with `paper_table` (transfer.table): the columns of the paper's tables per model.

The run folder gets params.yaml first, metrics.jsonl and ckpt/ of every fine-tuning run under
finetune/, and summary.json at the end. Running again skips fine-tuning runs that finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax

from vitscale import build, checks, config, metrics, pretrained, runs, sharding
from vitscale.data import datasets
from vitscale.data import vtab as vtab_data
from vitscale.evaluators import fewshot as fewshot_evaluator
from vitscale.evaluators import fewshot_lsr
from vitscale.models import flops
from vitscale.transfer import finetune, imagenet, table, vtab


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
            pretrained.check_file(cfg.pretrained, pre.model_spec())
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
    vtab.check(problems, cfg)
    imagenet.check(problems, cfg)
    checks.devices(problems, cfg.mesh, {"finetune_batch_size": cfg.finetune_batch_size})
    checks.raise_problems(problems)
    return pre


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
        mesh,
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
        results[m.name] = evaluator.evaluate(m.trainer.features, m.params)
        print(f"few-shot {m.name}: {', '.join(cfg.fewshot_datasets)} in {time.perf_counter() - t0:.0f} s")
    return results


def _final_metrics(models: list[pretrained.Pretrained], results: dict[str, dict]) -> dict[str, float]:
    """Flat metrics of every model for summary.json: the first one's unprefixed, the others' under "<name>/"."""
    few, fine, vt, imnet = (results[k] for k in RESULTS)
    primary = models[0].name
    final: dict[str, float] = {}
    for m in models:
        prefix = "" if m.name == primary else f"{m.name}/"
        for name, result in few.get(m.name, {}).items():
            final.update({prefix + k: v for k, v in fewshot_lsr.flatten(name, result).items()})
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


RESULTS = ("fewshot", "finetune", "vtab", "imagenet_evals")  # summary.json's result sections, in run order


def make_summary(
    cfg: config.TransferConfig, models: list[pretrained.Pretrained], results: dict[str, dict], t0: float, mesh
) -> dict[str, Any]:
    """Everything a reader needs: the source model, the results per protocol and model (`results`:
    {fewshot, finetune, vtab, imagenet_evals}), the paper's table, and flat `final` metrics (the model
    `pretrained` names unprefixed, the random baseline under random/). Datasets are named by their safe
    token everywhere (`datasets.metric_name`: `folder_<name>` for a folder), as in the metric names and
    the fine-tuning folders; `datasets` maps each back."""
    pre = models[0].cfg
    few = {
        m: {datasets.metric_name(n): r for n, r in by_dataset.items()} for m, by_dataset in results["fewshot"].items()
    }
    fine = {datasets.metric_name(n): by_model for n, by_model in results["finetune"].items()}
    results = {**results, "fewshot": few, "finetune": fine}
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
        **results,
        "paper_table": table.paper_table(models, cfg, results),
        "final": _final_metrics(models, results),
        "finetune_device_seconds": sum(r["device_seconds"] for by_model in fine.values() for r in by_model.values()),
        "wall_seconds_this_session": wall,
        "device_count": devices,
        "device_seconds_this_session": wall * devices,
        "environment": runs.environment(),
    }


def load_curves(out_dir: str | Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Every fine-tuning run of a transfer run folder, as records: {dataset (its safe token), model,
    lr, final (the retrained run, else a grid run), records (its metrics.jsonl)}. `names`: the
    run's `finetune_datasets` (default: from its params.yaml), found where `run` wrote them."""
    if names is None:
        params = Path(out_dir) / "params.yaml"
        names = config.load_yaml(params).get("finetune_datasets", []) if params.is_file() else []
    curves = []
    for path in sorted(p for n in names for p in finetune.finetune_dir(out_dir, n).glob("*/*/metrics.jsonl")):
        dataset, model, run = path.parts[-4:-1]
        point, final = finetune.parse_run_name(run)
        curves.append(
            {"dataset": dataset, "model": model, "lr": point["lr"], "final": final, "records": runs.read_metrics(path)}
        )
    return curves


def run(cfg: config.TransferConfig, out_dir: str | Path, *, checked: bool = False) -> dict[str, Any]:
    """`_run` as the one writer of `out_dir` (runs.lock; a notebook started by `vitscale run` writes
    under its lock); the other processes of a multi-host run write under process 0's. `checked`: the
    caller has run `check(cfg)` on these values (notebooks.check), so it is not run again."""
    if jax.process_index():
        return _run(cfg, out_dir, checked)
    with runs.writer(out_dir):
        return _run(cfg, out_dir, checked)


def _run(cfg: config.TransferConfig, out_dir: str | Path, checked: bool) -> dict[str, Any]:
    """Models -> few-shot -> fine-tuning -> VTAB -> ImageNet evaluations -> summary, into `out_dir`."""
    out = Path(out_dir)
    if not checked:
        check(cfg)
    runs.claim(out, cfg)
    t0 = time.time()

    mesh = sharding.make_mesh(cfg.mesh)
    models = load_models(cfg, mesh)
    print("models: " + "; ".join(f"{m.name} ({m.source}, step {m.step})" for m in models))
    results: dict[str, dict] = {"fewshot": fewshot_eval(models, cfg, mesh)}
    results["finetune"] = {
        name: finetune.finetune(models, name, cfg, finetune.finetune_dir(out, name), mesh)
        for name in cfg.finetune_datasets
    }
    results["vtab"] = vtab.evaluate(models, cfg, out, mesh)
    results["imagenet_evals"] = imagenet.evaluate(models, cfg, results["finetune"], out, mesh)

    summary = make_summary(cfg, models, results, t0, mesh)
    runs.write_json(out / "summary.json", summary)
    return summary
