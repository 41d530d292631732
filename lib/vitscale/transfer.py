"""Transfer: how good are a pretrained model's representations downstream?

`check(cfg)` reads what the parameters refer to (the run folder, the datasets, the devices);
`run(cfg, out_dir)` (notebooks/transfer.ipynb, `vitscale run parameters/transfer/<name>.yaml`)
then, for the model `pretrained` names (a pretraining run's newest checkpoint, or a random init),
and with `compare_random` also for a random init of the same shape:

1. few-shot linear evaluation (vitscale.evaluators, the paper's protocol) on each of
   `fewshot_datasets`, for every shot count and seed, from frozen pre_logits at the pretraining
   resolution;
2. fine-tuning (vitscale.finetune) on each of `finetune_datasets` at `finetune_resolution`.

The run folder gets params.yaml first, metrics.jsonl and ckpt/ of every fine-tuning run under
finetune/, and summary.json at the end. Running again skips fine-tuning runs that finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vitscale import (
    build,
    checks,
    config,
    evaluators,
    fewshot,
    finetune,
    flops,
    metrics,
    pretrained,
    runs,
    sharding,
    weights,
)
from vitscale.data import datasets


def pretrain_config(cfg: config.TransferConfig) -> config.PretrainConfig:
    """The pretrained model's parameters: the run folder's params.yaml, `random_model`, or (a .npz
    file) `pretrained_model`."""
    if cfg.pretrained == config.RANDOM:
        return config.PretrainConfig(**cfg.random_model)
    if cfg.pretrained.endswith(config.NPZ):
        return config.PretrainConfig(**cfg.pretrained_model)
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
            weights.check_file(cfg.pretrained, weights.spec_of(pre))
        except config.ConfigError as e:
            problems += e.problems
    if pre is not None:
        patch, res = pre.model_shape()["patch_size"], finetune.resolution(cfg, pre)
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
        if n is not None and not 0 < round(n * cfg.holdout_fraction) < n:
            problems.append(
                config.Problem(
                    "holdout_fraction",
                    f"{cfg.holdout_fraction} of the {n} training images of {name!r} leaves an empty held-out or "
                    "training part",
                )
            )
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
    evaluator = evaluators.FewShotEvaluator(
        cfg.fewshot_datasets,
        build.pipeline(pre),  # the pretraining's evaluation ops, at its resolution
        shots=tuple(cfg.fewshot_shots),
        seeds=tuple(range(cfg.fewshot_seeds)),
        l2=cfg.fewshot_l2,
        data_dir=cfg.data_dir,
        batch_size=cfg.eval_batch_size,
        input=cfg.input,
    )
    results = {}
    for m in models:
        t0 = time.perf_counter()
        results[m.name] = evaluator.evaluate(m.features, mesh)
        print(f"few-shot {m.name}: {', '.join(cfg.fewshot_datasets)} in {time.perf_counter() - t0:.0f} s")
    return results


def make_summary(
    cfg: config.TransferConfig, models: list[pretrained.Pretrained], few: dict, fine: dict, t0: float, mesh
) -> dict[str, Any]:
    """Everything a reader needs: the source model, few-shot and fine-tuning results per model, and
    flat `final` metrics (the model `pretrained` names unprefixed, the random baseline under random/).
    Datasets are named by their safe token everywhere (`datasets.metric_name`: `folder_<name>` for a
    folder), as in the metric names and the fine-tuning folders; `datasets` maps each back."""
    pre, primary = models[0].cfg, models[0].name
    few = {m: {datasets.metric_name(n): r for n, r in by_dataset.items()} for m, by_dataset in few.items()}
    fine = {datasets.metric_name(n): by_model for n, by_model in fine.items()}
    final: dict[str, float] = {}
    for m in models:
        prefix = "" if m.name == primary else f"{m.name}/"
        for name, result in few.get(m.name, {}).items():
            final.update({prefix + k: v for k, v in fewshot.flatten(name, result).items()})
        for name, by_model in fine.items():
            final[prefix + metrics.finetune(name)] = by_model[m.name][metrics.TEST_ACC]
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

    summary = make_summary(cfg, models, few, fine, t0, mesh)
    runs.write_json(out / "summary.json", summary)
    return summary
