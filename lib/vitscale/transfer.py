"""Transfer: how good are a pretrained model's representations downstream?

`run(cfg, out_dir)` is the one entry point (notebooks/transfer.ipynb and `vitscale run
parameters/transfer/<name>.yaml` both call it). For the model `pretrained` names (a pretraining run
folder's newest checkpoint, or a random init), and with `compare_random` also for a random init of
the same shape:

1. few-shot linear evaluation (vitscale.fewshot, the paper's protocol) on each of `fewshot_datasets`,
   for every shot count and seed, from the frozen pre_logits at the pretraining resolution;
2. fine-tuning (vitscale.finetune) on each of `finetune_datasets` at `finetune_resolution`.

The run folder gets params.yaml first, metrics.jsonl and ckpt/ of every fine-tuning run under
finetune/, and summary.json at the end. Running again skips fine-tuning runs that finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax

from vitscale import config as config_lib
from vitscale import data, fewshot, finetune, flops, runs, sharding, train


def load_models(cfg: config_lib.TransferConfig, mesh) -> list[finetune.Pretrained]:
    """The model `pretrained` names, then (compare_random) a random init of the same shape."""
    if cfg.pretrained == finetune.RANDOM:
        return [finetune.random_init(cfg.pretrain_config(), mesh, seed=cfg.seed)]
    models = [finetune.load_pretrained(cfg.pretrained, mesh)]
    if cfg.compare_random:
        models.append(finetune.random_init(models[0].cfg, mesh, seed=cfg.seed))
    return models


def fewshot_eval(
    models: list[finetune.Pretrained], cfg: config_lib.TransferConfig, mesh
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{model: {dataset: {"<k>shot": {mean, std, per_seed}}}} from frozen features at the pretraining resolution."""
    if not cfg.fewshot_datasets:
        return {}
    pre = models[0].cfg
    pipe = data.Pipeline(image_size=pre.image_size, channels=pre.channels)
    evaluator = fewshot.FewShotEvaluator(
        cfg.fewshot_datasets,
        pipe,
        shots=tuple(cfg.fewshot_shots),
        seeds=tuple(range(cfg.fewshot_seeds)),
        l2=cfg.fewshot_l2,
        data_dir=cfg.data_dir,
        batch_size=cfg.eval_batch_size,
    )
    results = {}
    for m in models:
        t0 = time.perf_counter()
        results[m.name] = evaluator.evaluate(m.features, mesh)
        print(f"few-shot {m.name}: {', '.join(cfg.fewshot_datasets)} in {time.perf_counter() - t0:.0f} s")
    return results


def run(cfg: config_lib.TransferConfig, out_dir: str | Path) -> dict[str, Any]:
    """Few-shot evaluation and fine-tuning as `cfg` says, into `out_dir`; returns the summary."""
    if isinstance(cfg, dict):
        cfg = config_lib.validate(config_lib.TransferConfig, cfg)
    out = Path(out_dir)
    cfg.check_devices(jax.device_count(), jax.process_count())
    train.claim_run_dir(out, cfg)
    t0 = time.time()

    mesh = sharding.make_mesh(cfg.mesh)
    models = load_models(cfg, mesh)
    print("models: " + "; ".join(f"{m.name} ({m.source}, step {m.step})" for m in models))
    few = fewshot_eval(models, cfg, mesh)
    fine = {name: finetune.finetune(models, name, cfg, out / "finetune" / name, mesh) for name in cfg.finetune_datasets}

    summary = make_summary(cfg, models, few, fine, t0, mesh)
    runs.write_json(out / "summary.json", summary)
    return summary


def make_summary(
    cfg: config_lib.TransferConfig, models: list[finetune.Pretrained], few: dict, fine: dict, t0: float, mesh
) -> dict[str, Any]:
    """Everything a reader needs: the source model, few-shot and fine-tuning results per model, and
    flat `final` metrics (the model `pretrained` names unprefixed, the random baseline under random/)."""
    pre, primary = models[0].cfg, models[0].name
    res = cfg.resolution()
    model = train.build_model(pre, finetune.num_classes(pre.dataset, pre.data_dir))
    final: dict[str, float] = {}
    for m in models:
        prefix = "" if m.name == primary else f"{m.name}/"
        for name, result in few.get(m.name, {}).items():
            final.update({prefix + k: v for k, v in fewshot.flatten(name, result).items()})
        for name, by_model in fine.items():
            r = by_model[m.name]
            final.update(
                {f"{prefix}finetune/{name}/test_acc": r["test/acc"], f"{prefix}finetune/{name}/best_lr": r["best_lr"]}
            )
    wall = time.time() - t0
    devices = int(mesh.devices.size)
    source = Path(models[0].source) / "summary.json"  # the pretraining run's compute, for plots against it
    pre_summary = runs.read_json(source) if source.is_file() else {}
    return {
        "kind": "transfer",
        "name": cfg.name,
        "pretrained": cfg.pretrained,
        "pretrained_dir": models[0].source,
        "pretrained_step": models[0].step,
        "pretrain_images_seen": pre_summary.get("images_seen"),
        "pretrain_train_flops": pre_summary.get("train_flops"),
        "variant": pre.variant,
        "pretrain_dataset": pre.dataset,
        "pretrain_image_size": pre.image_size,
        "finetune_resolution": res,
        "models": [m.name for m in models],
        "num_params": flops.count_params(model, (pre.image_size, pre.image_size, pre.channels)),
        "fewshot": few,
        "finetune": fine,
        "final": final,
        "finetune_device_seconds": sum(r["device_seconds"] for by_model in fine.values() for r in by_model.values()),
        "wall_seconds_this_session": wall,
        "device_count": devices,
        "device_seconds_this_session": wall * devices,
        "environment": runs.environment(),
    }


def load_curves(out_dir: str | Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Fine-tuning metrics of a transfer run: {dataset: {"<model> lr=<lr>" or "<model> final lr=<lr>": records}}."""
    root = Path(out_dir) / "finetune"
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(root.glob("*/*/*/metrics.jsonl")):
        dataset, model, run = path.parts[-4:-1]
        final = run.startswith("final_lr_")
        lr = run.removeprefix("final_lr_" if final else "lr_")
        curves.setdefault(dataset, {})[f"{model} {'final ' if final else ''}lr={lr}"] = runs.read_metrics(path)
    return curves
