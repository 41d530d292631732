"""Pretraining: state → compiled step → loop → evaluate → checkpoint, top to bottom.

`run(cfg, out_dir)` is the one entry point; the notebook cell in JupyterLab and the papermill
batch run both call it. A run folder that already holds checkpoints is resumed from the newest
readable one; the data pipeline is a pure function of the step, so the resumed run sees exactly
the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from vitscale import allocator, data, flops, optim, progress, runs, sharding
from vitscale import config as config_lib
from vitscale.models import vit

log = logging.getLogger("vitscale")


class NonFiniteLoss(RuntimeError):
    """Training diverged; the message names the first step with a non-finite loss."""


# ----------------------------------------------------------------------------- losses
def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def sigmoid_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example sigmoid cross-entropy against one-hot targets, summed over classes (the paper's
    upstream loss)."""
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), onehot).sum(-1)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "softmax_xent": softmax_xent,
    "sigmoid_xent": sigmoid_xent,
}


# ----------------------------------------------------------------------------- building blocks
def build_model(cfg: config_lib.PretrainConfig, num_classes: int) -> vit.ViT:
    shape = cfg.model_shape()
    head_bias = cfg.head_bias_init if cfg.head_bias_init is not None else (-10.0 if cfg.loss == "sigmoid_xent" else 0.0)
    return vit.ViT(
        num_classes=num_classes,
        patch_size=shape["patch_size"],
        width=shape["width"],
        depth=shape["depth"],
        mlp_dim=shape["mlp_dim"],
        num_heads=shape["num_heads"],
        pool_type=cfg.pool_type,
        posemb=cfg.posemb,
        dropout=cfg.dropout,
        head_bias_init=head_bias,
        remat=cfg.remat,
        scan=cfg.scan,
        dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32,
    )


def build_schedule(cfg: config_lib.PretrainConfig) -> optax.Schedule:
    return optim.make_schedule(
        cfg.schedule,
        cfg.lr,
        cfg.total_steps,
        warmup_steps=cfg.warmup_steps,
        timescale=cfg.timescale,
        cooldown_steps=cfg.cooldown_steps,
    )


def build_optimizer(cfg: config_lib.PretrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    rules = optim.DEFAULT_WD_RULES if cfg.wd_rules is None else tuple(tuple(r) for r in cfg.wd_rules)
    return optim.make_optimizer(
        cfg.optimizer,
        schedule,
        weight_decay=cfg.weight_decay,
        wd_rules=rules,
        grad_clip_norm=cfg.grad_clip_norm,
        b2=cfg.b2,
    )


def input_pipeline(cfg: config_lib.PretrainConfig) -> data.Pipeline:
    return data.Pipeline(image_size=cfg.image_size, channels=cfg.channels, crop_padding=cfg.crop_padding, flip=cfg.flip)


def train_split_name(cfg: config_lib.PretrainConfig) -> str:
    return f"{cfg.train_split}[:{cfg.train_examples}]" if cfg.train_examples else cfg.train_split


@dataclasses.dataclass
class Trainer:
    """The compiled pieces of a run: model, optimizer, shardings, train and eval steps."""

    model: vit.ViT
    tx: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    state_shardings: Any
    init_fn: Callable[[], Any]
    train_step: Callable[[Any, dict], tuple[Any, dict]]
    eval_step: Callable[[Any, dict], dict]
    features: Callable[[Any, jax.Array], jax.Array]


# Each chain keeps at least this many images: below it the chains' extra per-op overhead wins.
MIN_CHAIN_BATCH = 16


def default_chains(per_device_batch: int, platform: str) -> int:
    """Gradient chains per device for make_trainer: on a CPU, 4 (else 2) when the device's batch splits
    into chains of >= MIN_CHAIN_BATCH images, else 1; always 1 on GPU/TPU, where one pass already fills
    the device.

    Why: XLA:CPU runs one device's program as a graph of operations on a thread pool; a matrix product
    uses every core, but much of a ViT step (layer norms, softmax, GELU, small products in attention,
    the reductions of the backward pass) does not, and those run in sequence. Independent chains give
    the pool work to run side by side. Measured on 2 cores (benchmarks/train_throughput.py, one CPU
    device, jemalloc, 5 passes): 4 chains 1.12x (shape A), 1.15x (B), 1.06x (C) over one. Unlike several CPU
    devices (VITSCALE_CPU_DEVICES) this needs no all-reduce between devices."""
    if platform != "cpu":
        return 1
    for n in (4, 2):
        if per_device_batch % n == 0 and per_device_batch // n >= MIN_CHAIN_BATCH:
            return n
    return 1


def chains_of(cfg: config_lib.PretrainConfig) -> int | None:
    """make_trainer's `chains` for a run's grad_chains ("auto" -> None: default_chains)."""
    return None if cfg.grad_chains == "auto" else cfg.grad_chains


def make_trainer(
    model: vit.ViT,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    image_shape,
    loss: str = "softmax_xent",
    seed: int = 0,
    chains: int | None = None,
) -> Trainer:
    """Initialise sharded state and jit the steps with explicit in/out shardings.

    `chains` > 1 splits each device's share of the batch into that many independent forward and
    backward passes whose gradients are averaged: the same update, computed as separate chains of
    operations that XLA:CPU runs side by side on the cores. None: `default_chains` for the batch."""
    loss_fn = LOSSES[loss]
    key = jax.random.key(seed)
    init_key, dropout_key = jax.random.split(key)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)

    def init():
        params = model.init(init_key, dummy)["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    abstract = jax.eval_shape(init)
    shardings = sharding.tree_shardings(abstract, mesh)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)

    def objective(params, images, labels, rng):
        logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        return jnp.mean(loss_fn(logits, labels))

    # Jitted on its own so that the chains below trace the model once and call one function (XLA inlines
    # it): tracing it once per chain made a fresh process's first step 2x slower even with a warm cache.
    value_and_grad = jax.jit(jax.value_and_grad(objective))

    def train_step(state, batch):
        rng = jax.random.fold_in(dropout_key, state["step"])
        n = chains or default_chains(batch["image"].shape[0] // mesh.size, mesh.devices.flat[0].platform)
        if n == 1:
            value, grads = value_and_grad(state["params"], batch["image"], batch["label"], rng)
        else:
            # [B, ...] -> [chains, B / chains, ...] with every device's rows split among the chains,
            # so each chain stays sharded over the data axis like the batch.
            parts = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(-1, n, *x.shape[1:]), 1, 0), batch)
            outs = [
                value_and_grad(state["params"], parts["image"][i], parts["label"][i], jax.random.fold_in(rng, i))
                for i in range(n)
            ]
            value = sum(v for v, _ in outs) / n
            grads = jax.tree.map(lambda *g: sum(g) / n, *(g for _, g in outs))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        return new, {"loss": value, "grad_norm": optax.tree.norm(grads)}

    def eval_step(params, batch):
        logits, _ = model.apply({"params": params}, batch["image"], train=False)
        mask = batch["mask"].astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(loss_fn(logits, batch["label"]) * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    def features(params, images):
        return model.apply({"params": params}, images, train=False)[1]["pre_logits"]

    return Trainer(
        model=model,
        tx=tx,
        mesh=mesh,
        state_shardings=shardings,
        init_fn=jax.jit(init, out_shardings=shardings),
        train_step=jax.jit(
            train_step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, repl), donate_argnums=0
        ),
        eval_step=jax.jit(eval_step, in_shardings=(shardings["params"], batch_sh), out_shardings=repl),
        features=jax.jit(features, in_shardings=(shardings["params"], batch_sh), out_shardings=batch_sh),
    )


def evaluate(trainer: Trainer, params, split: data.Split, pipe: data.Pipeline, batch_size: int) -> dict[str, float]:
    """Loss and top-1 accuracy over a whole split."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    batch_size = -(-batch_size // jax.device_count()) * jax.device_count()  # padded batches split evenly
    for batch in data.eval_batches(split, pipe, batch_size):
        out = trainer.eval_step(params, sharding.put_batch(batch, trainer.mesh))
        totals = {k: totals[k] + out[k] for k in totals}
    totals = jax.device_get(totals)
    return {"loss": float(totals["loss_sum"] / totals["count"]), "acc": float(totals["correct"] / totals["count"])}


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_manager(
    path: Path, cfg: config_lib.PretrainConfig, protect: Iterable[int] = ()
) -> ocp.CheckpointManager:
    """Orbax manager keeping the last `keep_checkpoints`, every `keep_every`-th step, and `protect`
    (the steps cooldown branches start from)."""
    from orbax.checkpoint import checkpoint_managers as cm

    policies = [cm.LatestN(cfg.keep_checkpoints)]
    if cfg.keep_every:
        policies.append(cm.EveryNSteps(cfg.keep_every))
    if protect:
        policies.append(cm.CustomSteps(sorted(protect)))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies), create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(path.absolute(), options=options)


def save_checkpoint(mngr: ocp.CheckpointManager, state, meta: dict) -> None:
    step = int(jax.device_get(state["step"]))
    if step in mngr.all_steps():
        return
    mngr.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
    )
    mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, max_step: int | None = None, move_aside: bool = True):
    """The newest readable checkpoint (at or before max_step) as (state, meta), or (None, None).
    A partial or corrupt newest checkpoint is skipped with a warning in favour of the previous one,
    and (for a run's own folder, `move_aside`) moved to `<step>.unreadable-<time>`: kept for
    inspection, out of the way of new saves. Readers of another run's folder pass move_aside=False."""
    for step in sorted(mngr.all_steps(), reverse=True):
        if max_step is not None and step > max_step:
            continue
        try:
            out = mngr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
            return out["state"], out["meta"]
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
            bad = Path(mngr.directory) / str(step)
            aside = bad.with_name(f"{step}.unreadable-{int(time.time())}")
            warnings.warn(
                f"checkpoint at step {step} in {mngr.directory} is unreadable ({type(e).__name__}: "
                f"{str(e)[:200]}); moved to {aside.name}, trying the previous one",
                stacklevel=2,
            )
            if move_aside and jax.process_index() == 0 and bad.exists():
                bad.rename(aside)
                mngr.reload()
    return None, None


def abstract_with_shardings(trainer: Trainer):
    abstract = jax.eval_shape(trainer.init_fn)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, trainer.state_shardings
    )


# ----------------------------------------------------------------------------- the loop
class _Interrupt:
    """Turns Ctrl-C into a flag the loop checks between steps, so the state stays whole to save."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train_loop(
    trainer: Trainer,
    state,
    *,
    schedule: optax.Schedule,
    batches: Iterator[dict],
    end_step: int,
    cfg: config_lib.PretrainConfig,
    metrics: runs.MetricsLog,
    mngr: ocp.CheckpointManager,
    evaluators: Callable[[Any, int, bool], dict],
    desc: str,
    checkpoint_at: set[int] = frozenset(),
    meta: dict | None = None,
):
    """Run steps until `end_step`: log, evaluate, checkpoint; returns (final state, meta). `meta`
    (saved with every checkpoint) carries the data position and the device-seconds spent so far."""
    step = int(jax.device_get(state["step"]))
    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    pending: list[tuple[int, Any]] = []  # (step, device loss) not yet fetched
    last_good_step = step
    t_last, step_last = time.perf_counter(), step
    meta = dict(meta or {})
    meta.setdefault("device_seconds", 0.0)
    meta.setdefault("wall_seconds", 0.0)  # of this loop, over every session of the run (eval_share's denominator)
    meta.setdefault("eval_seconds", 0.0)  # wall seconds inside evaluators
    meta.setdefault("checkpoint_seconds", 0.0)
    devices = jax.device_count()
    t_meta = time.perf_counter()

    def check_losses():
        nonlocal last_good_step
        for s, loss in pending:
            if not math.isfinite(float(loss)):
                raise NonFiniteLoss(
                    f"loss is {float(loss)} at step {s}; the run stopped there. The last good "
                    f"checkpoint is at step {max([0, *[c for c in mngr.all_steps() if c < s]])}. "
                    "Lower lr or raise warmup_steps."
                )
            last_good_step = s
        pending.clear()

    with progress.bar(total=end_step, initial=step, desc=desc, unit="step") as pbar, _Interrupt() as interrupt:
        while step < end_step:
            batch = sharding.put_batch(next(batches), trainer.mesh)
            state, out = trainer.train_step(state, batch)
            step += 1
            pending.append((step, out["loss"]))
            if step % cfg.log_every == 0 or step == end_step:
                check_losses()
                now = time.perf_counter()
                loss = float(out["loss"])
                rate = (step - step_last) * cfg.batch_size / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                metrics.append(
                    {
                        "step": step,
                        "images_seen": step * cfg.batch_size,
                        "train/loss": loss,
                        "train/grad_norm": float(out["grad_norm"]),
                        "lr": float(schedule(step - 1)),
                        "images_per_s": rate,
                        "time": time.time(),
                    }
                )
                pbar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            if step % cfg.eval_every == 0 or step == end_step:
                check_losses()
                t_eval = time.perf_counter()
                record = evaluators(state["params"], step, step == end_step)
                meta["eval_seconds"] += time.perf_counter() - t_eval
                metrics.append({"step": step, "images_seen": step * cfg.batch_size, **record})
                pbar.set_postfix(
                    **{
                        k.replace("/", "_"): f"{v:.4f}"
                        for k, v in record.items()
                        if k.endswith(("/acc", "/loss")) and not k.startswith("fewshot/")
                    },
                    refresh=False,
                )
            if step % ckpt_every == 0 or step == end_step or step in checkpoint_at or interrupt.requested:
                check_losses()
                now = time.perf_counter()
                meta["device_seconds"] += (now - t_meta) * devices
                meta["wall_seconds"] += now - t_meta
                t_meta = now
                meta["data_position"] = {"step": step, "images_seen": step * cfg.batch_size}
                save_checkpoint(mngr, state, meta)
                meta["checkpoint_seconds"] += time.perf_counter() - now
            pbar.update(1)
            if interrupt.requested:
                raise KeyboardInterrupt(f"interrupted at step {step}; checkpoint saved, run again to resume")
    return state, meta


def run(cfg: config_lib.PretrainConfig, out_dir: str | Path) -> dict[str, Any]:
    """Pretrain as `cfg` says into `out_dir`, resuming from its checkpoints; returns the summary."""
    if isinstance(cfg, dict):
        cfg = config_lib.validate(config_lib.PretrainConfig, cfg)
    out = Path(out_dir)
    sharding.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    cfg.check_devices(jax.device_count(), jax.process_count())
    claim_run_dir(out, cfg)
    t0 = time.time()

    # Data (validated before any compute: split sizes, subset size).
    n_train = data.num_examples(cfg.dataset, cfg.train_split, cfg.data_dir)
    if cfg.train_examples and cfg.train_examples > n_train:
        raise config_lib.ConfigError(
            f"train_examples {cfg.train_examples} exceeds the {n_train} examples of {cfg.dataset}:{cfg.train_split}"
        )
    train = data.load_split(cfg.dataset, train_split_name(cfg), cfg.data_dir)
    test = data.load_split(cfg.dataset, cfg.test_split, cfg.data_dir)
    pipe = input_pipeline(cfg)

    # State.
    mesh = sharding.make_mesh(cfg.mesh)
    if advice := allocator.check(mesh.devices.flat[0].platform):
        warnings.warn(advice, stacklevel=2)
    model = build_model(cfg, train.num_classes)
    schedule = build_schedule(cfg)
    trainer = make_trainer(
        model,
        build_optimizer(cfg, schedule),
        mesh,
        image_shape=(cfg.image_size, cfg.image_size, cfg.channels),
        loss=cfg.loss,
        seed=cfg.seed,
        chains=chains_of(cfg),
    )
    branch_starts = {b.start for b in cfg.cooldown_branches}
    mngr = checkpoint_manager(out / "ckpt", cfg, protect=branch_starts)
    metrics = runs.MetricsLog(out / "metrics.jsonl")
    state, meta = restore_latest(mngr, abstract_with_shardings(trainer), max_step=cfg.total_steps)
    if state is None:
        state = trainer.init_fn()
    start = int(jax.device_get(state["step"]))
    metrics.truncate_after(start)
    if start:
        print(f"resuming {out} from step {start}")

    evaluators = make_evaluators(cfg, trainer, test, pipe)
    batches = data.train_batches(
        train,
        pipe,
        global_batch=cfg.batch_size,
        seed=cfg.seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    state, meta = train_loop(
        trainer,
        state,
        schedule=schedule,
        batches=batches,
        end_step=cfg.total_steps,
        cfg=cfg,
        metrics=metrics,
        mngr=mngr,
        evaluators=evaluators,
        desc=cfg.name,
        checkpoint_at=branch_starts,
        meta=meta,
    )
    branches = [run_branch(cfg, b, trainer, out, train, pipe, evaluators) for b in cfg.cooldown_branches]

    summary = make_summary(cfg, model, metrics.read(), t0, mesh, branches, meta)
    summary["train_examples"] = len(train)  # the data axis, resolved when the parameter is None
    runs.write_json(out / "summary.json", summary)
    return summary


def run_branch(
    cfg,
    branch: config_lib.CooldownBranch,
    trainer: Trainer,
    out: Path,
    train: data.Split,
    pipe: data.Pipeline,
    evaluators,
) -> dict[str, Any]:
    """A cooldown branch: from the main run's checkpoint at `start`, cool down linearly over `steps`."""
    name = f"cooldown_{branch.start}+{branch.steps}"
    bdir = out / "branches" / name
    schedule = optim.cooldown_branch_schedule(
        cfg.lr,
        branch_start=branch.start,
        cooldown_steps=branch.steps,
        warmup_steps=cfg.warmup_steps,
        timescale=cfg.timescale,
    )
    btrainer = make_trainer(
        trainer.model,
        build_optimizer(cfg, schedule),
        trainer.mesh,
        image_shape=(cfg.image_size, cfg.image_size, cfg.channels),
        loss=cfg.loss,
        seed=cfg.seed,
        chains=chains_of(cfg),
    )
    abstract = abstract_with_shardings(btrainer)
    bmngr = checkpoint_manager(bdir / "ckpt", cfg)
    state, meta = restore_latest(bmngr, abstract)
    if state is None:
        main = checkpoint_manager(out / "ckpt", cfg, protect={branch.start})
        state, meta = restore_latest(main, abstract, max_step=branch.start)
        if state is None or int(state["step"]) != branch.start:
            raise RuntimeError(f"cooldown branch {name}: the main run has no checkpoint at step {branch.start}")
    start = int(jax.device_get(state["step"]))
    metrics = runs.MetricsLog(bdir / "metrics.jsonl")
    metrics.truncate_after(start)
    batches = data.train_batches(
        train,
        pipe,
        global_batch=cfg.batch_size,
        seed=cfg.seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    _, meta = train_loop(
        btrainer,
        state,
        schedule=schedule,
        batches=batches,
        end_step=branch.start + branch.steps,
        cfg=cfg,
        metrics=metrics,
        mngr=bmngr,
        evaluators=evaluators,
        desc=name,
        meta=meta,
    )
    final = {k: v for r in metrics.read() for k, v in r.items()}
    return {
        "name": name,
        "start": branch.start,
        "steps": branch.steps,
        "total_steps": branch.start + branch.steps,
        "images_seen": (branch.start + branch.steps) * cfg.batch_size,
        # Device-seconds of the main run up to the branch point plus the branch's own.
        "device_seconds": meta.get("device_seconds"),
        "metrics": {k: v for k, v in final.items() if k.startswith(("test/", "fewshot/", "train/"))},
    }


def make_evaluators(cfg, trainer: Trainer, test: data.Split, pipe: data.Pipeline) -> Callable[[Any, int, bool], dict]:
    """Test-split loss/accuracy, plus few-shot linear transfer every `fewshot_every` steps and at the
    end of the main run and of each branch (`final`)."""
    fewshot_eval = None
    if cfg.fewshot_datasets:
        from vitscale import fewshot

        fewshot_eval = fewshot.FewShotEvaluator(
            cfg.fewshot_datasets,
            pipe,
            shots=tuple(cfg.fewshot_shots),
            seeds=tuple(range(cfg.fewshot_seeds)),
            data_dir=cfg.data_dir,
        )
    every = cfg.fewshot_every or cfg.eval_every

    def evaluators(params, step: int, final: bool = False) -> dict[str, float]:
        r = {f"test/{k}": v for k, v in evaluate(trainer, params, test, pipe, cfg.eval_batch_size).items()}
        if fewshot_eval is not None and (step % every == 0 or final):
            r.update(fewshot_eval.run(lambda x: trainer.features(params, x), trainer.mesh))
        return r

    return evaluators


def make_summary(cfg, model: vit.ViT, records: list[dict], t0: float, mesh, branches, meta: dict) -> dict[str, Any]:
    """summary.json: final metrics, size and compute (FLOPs, device-seconds), and the environment."""
    final: dict[str, Any] = {}
    for r in records:
        final.update({k: v for k, v in r.items() if k not in ("time",)})
    image_shape = (cfg.image_size, cfg.image_size, cfg.channels)
    fwd = flops.forward_flops(model, image_shape)
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
        "num_params": flops.count_params(model, image_shape),
        "forward_flops_per_image": fwd,
        "train_flops": 3 * fwd * images_seen,
        "final": {k: v for k, v in final.items() if k.startswith(("test/", "train/", "fewshot/"))},
        "best_test_acc": max((r["test/acc"] for r in records if "test/acc" in r), default=None),
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


def claim_run_dir(out: Path, cfg: config_lib.PretrainConfig) -> None:
    """Write params.yaml, or check that an existing run folder was made with the same parameters."""
    params = out / "params.yaml"
    text = config_lib.dump(cfg)
    if params.exists():
        old = config_lib.resolved(type(cfg), config_lib.load_yaml(params))
        new = cfg.model_dump(mode="json")
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise config_lib.ConfigError(
                f"{out} holds a run with other parameters (differing: {', '.join(diff)}); choose another "
                "output folder, or delete that one to start over"
            )
        return
    runs.atomic_write_text(params, text)
