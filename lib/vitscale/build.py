"""The front door: what a pretraining config builds (model, schedule, optimizer, input pipeline,
loop spec, trainer, evaluators, batches). Programs, tests and benchmarks build through here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from vitscale import config, loop, metrics, mup, optim, sharding
from vitscale.data import pipeline as data_pipeline
from vitscale.data import sources
from vitscale.evaluators import fewshot as fewshot_evaluator
from vitscale.models import vit


def model(cfg: config.PretrainConfig, num_classes: int) -> vit.ViT:
    """The ViT of `cfg` (its variant with any shape overrides) for `num_classes`, via vit.make_model."""
    head_bias = cfg.head_bias_init
    if head_bias is None:
        head_bias = -10.0 if cfg.loss == "sigmoid_xent" else 0.0  # the paper's sigmoid head starts at p ~ 0
    mult = mup.multipliers(cfg)
    return vit.make_model(
        cfg.variant,
        num_classes,
        width=cfg.width,
        depth=cfg.depth,
        mlp_dim=cfg.mlp_dim,
        num_heads=cfg.num_heads,
        pool_type=cfg.pool_type,
        posemb=cfg.posemb,
        dropout=cfg.dropout,
        head_bias_init=head_bias,
        remat=cfg.remat,
        scan=cfg.scan,
        dtype=cfg.dtype,
        representation_size=cfg.representation_size,
        gelu=cfg.gelu,
        q_scale=mult.q_scale,
        residual_scale=mult.residual_scale,
        head_scale=mult.head_scale,
        posemb_std=mult.posemb_std,
    )


def image_shape(cfg: config.PretrainConfig) -> tuple[int, int, int]:
    return (cfg.image_size, cfg.image_size, cfg.channels)


def schedule(cfg: config.PretrainConfig) -> optax.Schedule:
    return optim.make_schedule(
        cfg.schedule,
        cfg.lr,
        cfg.total_steps,
        warmup_steps=cfg.warmup_steps,
        timescale=cfg.timescale,
        cooldown_steps=cfg.cooldown_steps,
    )


def optimizer(
    cfg: config.PretrainConfig, sched: optax.Schedule, weight_decay: float | jax.Array | None = None
) -> optax.GradientTransformation:
    """The optimizer of `cfg`: its wd rules, and its learning-rate rules and epsilon from the
    parametrization unless `lr_rules` names them (vitscale.mup); `weight_decay` in place of cfg's."""
    rules = optim.DEFAULT_WD_RULES if cfg.wd_rules is None else tuple(tuple(r) for r in cfg.wd_rules)
    mult = mup.multipliers(cfg)
    lr_rules = mult.lr_rules if cfg.lr_rules is None else tuple(tuple(r) for r in cfg.lr_rules)
    return optim.make_optimizer(
        cfg.optimizer,
        sched,
        weight_decay=cfg.weight_decay if weight_decay is None else weight_decay,
        wd_rules=rules,
        lr_rules=lr_rules,
        eps_scale=mult.eps_scale,
        grad_clip_norm=cfg.grad_clip_norm,
        b2=cfg.b2,
    )


def copies_optimizer(
    cfgs: Sequence[config.PretrainConfig],
) -> Callable[[jax.Array], optax.GradientTransformation] | None:
    """One optimizer for copies trained as one program (vitscale.stacked vmaps its update): given a
    copy's index (traced), the chain they share with that copy's own schedule and weight decay. None
    when their chains differ in more than that (another optimizer, rule or clip, or a weight decay of 0,
    which drops the decay from the chain, beside one that is not)."""

    def shape(c: config.PretrainConfig) -> tuple:
        return (c.optimizer, c.wd_rules, c.lr_rules, c.grad_clip_norm, c.b2, mup.multipliers(c), c.weight_decay == 0)

    if any(shape(c) != shape(cfgs[0]) for c in cfgs):
        return None
    schedules = [schedule(c) for c in cfgs]
    decays = [c.weight_decay for c in cfgs]

    def tx(i: jax.Array) -> optax.GradientTransformation:
        own = lambda count: jax.lax.switch(i, schedules, count)
        return optimizer(cfgs[0], own, weight_decay=0.0 if decays[0] == 0 else jnp.asarray(decays, jnp.float32)[i])

    return tx


def pipeline(cfg: config.PretrainConfig) -> data_pipeline.Pipeline:
    """pp_train / pp_eval when given, else today's pipeline from image_size, channels, crop_padding, flip."""
    return data_pipeline.Pipeline(
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


def trainer(
    cfg: config.PretrainConfig, mesh, num_classes: int, sched: optax.Schedule | None = None, seed: int | None = None
) -> loop.Trainer:
    """The compiled steps of a pretraining run (`sched`: the run's own unless given, e.g. a branch's)."""
    return loop.make_trainer(
        model(cfg, num_classes),
        optimizer(cfg, sched or schedule(cfg)),
        mesh,
        image_shape=image_shape(cfg),
        loss=cfg.loss,
        seed=cfg.seed if seed is None else seed,
        chains=None if cfg.grad_chains == "auto" else cfg.grad_chains,
        peak_flops=cfg.peak_flops,
    )


def evaluators_of(
    cfg: config.PretrainConfig,
    t: loop.Trainer,
    test: sources.Split | sources.Source,
    pipe: data_pipeline.Pipeline,
    val: sources.Split | sources.Source | None = None,
) -> loop.Evaluators:
    """Test-split (and held-out `val`) loss and accuracy at every evaluation, plus few-shot linear
    transfer every `fewshot_every` steps and at the end of the main run and of each branch (`final`)."""
    fewshot = None
    if cfg.fewshot_datasets:
        fewshot = fewshot_evaluator.FewShotEvaluator(
            cfg.fewshot_datasets,
            pipe,
            t.mesh,
            shots=tuple(cfg.fewshot_shots),
            seeds=tuple(range(cfg.fewshot_seeds)),
            data_dir=cfg.data_dir,
            batch_size=cfg.eval_batch_size,
            mode=cfg.input,
        )
    every = cfg.fewshot_every or cfg.eval_every

    def evaluate(params, step: int, final: bool = False) -> dict[str, float]:
        record = {}
        for name, split in (("test", test), ("val", val)):
            if split is not None:
                batches = data_pipeline.eval_batches(split, pipe, sharding.eval_batch_size(cfg.eval_batch_size))
                record.update({metrics.on_split(name, k): v for k, v in loop.evaluate(t, params, batches).items()})
        if fewshot is not None and (step % every == 0 or final):
            record.update(fewshot.run(t.features, params))
        return record

    return evaluate


def batches(cfg: config.PretrainConfig, train: sources.Split | sources.Source, pipe: data_pipeline.Pipeline):
    """step -> this host's training batches from that step on."""
    return lambda step: data_pipeline.train_batches(
        train,
        pipe,
        global_batch=cfg.batch_size,
        seed=cfg.seed,
        start_step=step,
        host=data_pipeline.Host(jax.process_index(), jax.process_count()),
    )
