"""One training loop for every run: pretraining, its cooldown branches and fine-tuning.

`make_trainer` compiles a model, an optimizer and a loss into sharded steps; `fit` is the one
resume-or-init -> batches -> loop path, writing `metrics.jsonl` and `ckpt/` into a run folder.
Batches come from the caller as iterators: this module imports no TensorFlow, so a training step
runs where only JAX is installed (benchmarks/device_check.py).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitscale import backend, checkpoints, config, flops, metrics, perf, progress, runs, sharding
from vitscale.models import vit

_DEFAULTS = config.PretrainConfig.model_fields


class NonFiniteLoss(RuntimeError):
    """Training diverged; the message names the first step with a non-finite loss."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """How long a loop runs and how often it logs, evaluates and checkpoints."""

    total_steps: int
    batch_size: int  # global
    # Defaults: the pretraining schema's (config.PretrainConfig), the one source of them.
    log_every: int = _DEFAULTS["log_every"].default
    eval_every: int = _DEFAULTS["eval_every"].default
    checkpoint_every: int | None = _DEFAULTS["checkpoint_every"].default  # None: at eval_every
    keep_checkpoints: int = _DEFAULTS["keep_checkpoints"].default
    keep_every: int | None = _DEFAULTS["keep_every"].default


# ----------------------------------------------------------------------------- losses
def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels (precision policy: the loss is float32
    whatever the model's dtype)."""
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


# ----------------------------------------------------------------------------- compiled steps
@dataclasses.dataclass
class Trainer:
    """The compiled pieces of a run: model, optimizer, shardings, and the jitted steps."""

    model: vit.ViT
    tx: optax.GradientTransformation
    mesh: jax.sharding.Mesh
    state_shardings: Any
    init_fn: Callable[[], TrainState]
    start_from: Callable[[Any], TrainState]  # params -> step 0 with a fresh optimizer state
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    eval_step: Callable[[Any, dict], dict]
    features: Callable[[Any, jax.Array], jax.Array]
    forward_flops: int = 0  # matmul FLOPs of one image's forward pass (flops.forward_flops)
    peak: perf.Peak | None = None  # each device's matmul peak, for MFU
    attention: str = "xla"  # the attention kernel: "cudnn", "xla" or "xla-cpu" (backend.attention_of)

    def abstract_state(self) -> TrainState:
        """The state's shapes, dtypes and shardings (what a checkpoint restores into)."""
        abstract = jax.eval_shape(self.init_fn)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_shardings
        )


def make_trainer(
    model: vit.ViT,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    image_shape: tuple[int, int, int],
    loss: str = "softmax_xent",
    seed: int = 0,
    chains: int | None = None,
    peak_flops: float | None = None,
) -> Trainer:
    """Initialise sharded state and jit the steps with explicit in/out shardings. The backend's
    speed work is switched on here: its kernels, and `chains` gradient chains per device (None:
    backend.default_chains for the batch). `peak_flops` overrides each device's peak for MFU."""
    device = mesh.devices.flat[0]
    platform = device.platform
    model = model.clone(kernels=backend.kernels_for(platform, model.dtype, model.width // model.num_heads))
    peak = perf.device_peak(device, perf.precision_of(model.dtype), peak_flops)
    loss_fn = LOSSES[loss]
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    dummy = jnp.zeros((1, *image_shape), jnp.float32)

    def start_from(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    def init():
        return start_from(model.init(init_key, dummy)["params"])

    shardings = sharding.tree_shardings(jax.eval_shape(init), mesh)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)

    def objective(params, images, labels, rng):
        logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        return jnp.mean(loss_fn(logits, labels))

    # Jitted on its own so that several chains trace the model once (XLA inlines the call).
    value_and_grad = jax.jit(jax.value_and_grad(objective))

    def train_step(state, batch):
        rng = jax.random.fold_in(dropout_key, state.step)
        n = chains or backend.default_chains(batch["image"].shape[0] // mesh.size, platform)
        value, grads = backend.chained(value_and_grad, n)(state.params, batch["image"], batch["label"], rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
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
        start_from=jax.jit(start_from, out_shardings=shardings),
        train_step=jax.jit(
            train_step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, repl), donate_argnums=0
        ),
        eval_step=jax.jit(eval_step, in_shardings=(shardings.params, batch_sh), out_shardings=repl),
        features=jax.jit(features, in_shardings=(shardings.params, batch_sh), out_shardings=batch_sh),
        forward_flops=flops.forward_flops(model, image_shape),
        peak=peak,
        attention=backend.attention_of(model.kernels),
    )


def eval_batch_size(batch_size: int) -> int:
    """An evaluation batch size rounded up to a multiple of the device count (padded batches split evenly)."""
    return -(-batch_size // jax.device_count()) * jax.device_count()


def evaluate(trainer: Trainer, params, batches: Iterable[dict]) -> dict[str, float]:
    """Loss and top-1 accuracy over a whole split's masked batches (data.pipeline.eval_batches, sized by
    eval_batch_size): {"loss": ..., "acc": ...}."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
        out = trainer.eval_step(params, sharding.put_batch(batch, trainer.mesh))
        totals = {k: totals[k] + out[k] for k in totals}
    totals = jax.device_get(totals)
    return {"loss": float(totals["loss_sum"] / totals["count"]), "acc": float(totals["correct"] / totals["count"])}


def perf_summary(trainer: Trainer, records: list[dict], meta: dict | None = None) -> dict[str, Any]:
    """summary.json's `mfu` (the median of the logged training rows' perf/mfu, the first row, which
    holds the compilation, left out when there are others) and `perf`: the same for images/s per
    device, the MFU over the run's whole device-seconds (evaluation, checkpoints and compilation
    included), the peak with its source, and the attention kernel."""
    rows = [r for r in records if metrics.IMAGES_PER_S in r]
    rows = rows[1:] if len(rows) > 1 else rows
    median = lambda key: float(np.median([r[key] for r in rows])) if rows and all(key in r for r in rows) else None
    meta = meta or {}
    overall = None
    last = max((r.get("images_seen", 0) for r in records), default=0)
    if trainer.peak is not None and meta.get("device_seconds"):
        overall = 3.0 * trainer.forward_flops * last / (meta["device_seconds"] * trainer.peak.flops_per_s)
    return {
        "mfu": median(metrics.MFU),
        "perf": {
            "images_per_s_per_device": median(metrics.IMAGES_PER_S_PER_DEVICE),
            "mfu_overall": overall,
            "peak": trainer.peak.as_dict() if trainer.peak is not None else None,
            "forward_flops_per_image": trainer.forward_flops,
            "attention": trainer.attention,
            "devices": trainer.mesh.size,
        },
    }


# ----------------------------------------------------------------------------- the loop
def perf_record(trainer: Trainer, images_per_s: float) -> dict[str, float]:
    """perf/images_per_s_per_device and perf/mfu (against trainer.peak) for a logged rate."""
    devices = trainer.mesh.size
    record = {metrics.IMAGES_PER_S_PER_DEVICE: images_per_s / devices}
    if trainer.peak is not None and trainer.forward_flops:
        record[metrics.MFU] = perf.mfu(images_per_s, trainer.forward_flops, devices, trainer.peak.flops_per_s)
    return record


# Ctrl-C, SLURM's preemption and time-limit SIGTERM, and the early warning the job scripts ask for
# (`--signal=USR1@<seconds>`, cluster.PREEMPT_SIGNAL).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Preempted(KeyboardInterrupt):
    """The run stopped at a step boundary on a signal, after saving a checkpoint there; rerunning resumes."""

    def __init__(self, step: int, signame: str):
        self.step = step
        super().__init__(f"preempted at step {step} ({signame}); checkpoint saved, run the same command to resume")


class _Interrupt:
    """Turns STOP_SIGNALS into a flag the loop checks between steps, so the state stays whole to save."""

    def __init__(self):
        self.requested = False
        self.signame = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread: leave the signals alone
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        self.requested = True
        self.signame = signal.Signals(signum).name

    def agreed(self, step: int, every: int) -> bool:
        """Whether to stop at `step`. Several processes agree (any one asked, all stop) at every
        `every`-th step, so no process saves alone; one process stops at the next step."""
        if jax.process_count() == 1:
            return self.requested
        if step % every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(jnp.int32(self.requested))
        if int(flags.max()) and not self.requested:
            self.requested, self.signame = True, "another process"
        return bool(int(flags.max()))

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


Evaluators = Callable[[Any, int, bool], dict[str, float]]  # (params, step, final) -> metrics


def train_loop(
    trainer: Trainer,
    state: TrainState,
    spec: LoopSpec,
    *,
    schedule: optax.Schedule,
    batches: Iterator[dict],
    end_step: int,
    log: runs.MetricsLog,
    mngr,
    evaluators: Evaluators,
    desc: str,
    checkpoint_at: Iterable[int] = (),
    meta: dict | None = None,
) -> tuple[TrainState, dict]:
    """Steps until `end_step`: log, evaluate, checkpoint. `meta` (saved with every checkpoint)
    carries the data position and the seconds spent so far, over every session of the run."""
    step = int(jax.device_get(state.step))
    ckpt_every = spec.checkpoint_every or spec.eval_every
    checkpoint_at = set(checkpoint_at)
    pending: list[tuple[int, Any]] = []  # (step, device loss) not yet fetched
    t_last, step_last = time.perf_counter(), step
    meta = {"device_seconds": 0.0, "wall_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0, **(meta or {})}
    devices = jax.device_count()
    t_meta = time.perf_counter()

    def check_losses():
        for s, loss in pending:
            if not math.isfinite(float(loss)):
                good = max([0, *[c for c in mngr.all_steps() if c < s]])
                raise NonFiniteLoss(
                    f"loss is {float(loss)} at step {s}; the run stopped there. The last good checkpoint is at "
                    f"step {good}. Lower lr or raise warmup_steps."
                )
        pending.clear()

    batch = progress.batch_mode()  # a batch report gets a line per evaluation instead of a progress bar
    t_start, step_start = time.perf_counter(), step
    bar = progress.bar(total=end_step, initial=step, desc=desc, unit="step", disable=batch)
    with bar as pbar, _Interrupt() as interrupt:
        while step < end_step:
            state, out = trainer.train_step(state, sharding.put_batch(next(batches), trainer.mesh))
            step += 1
            pending.append((step, out["loss"]))
            images_seen = step * spec.batch_size
            if step % spec.log_every == 0 or step == end_step:
                check_losses()
                now = time.perf_counter()
                loss, rate = float(out["loss"]), (step - step_last) * spec.batch_size / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                log.append(
                    {
                        "step": step,
                        "images_seen": images_seen,
                        metrics.TRAIN_LOSS: loss,
                        metrics.GRAD_NORM: float(out["grad_norm"]),
                        metrics.LR: float(schedule(step - 1)),
                        metrics.IMAGES_PER_S: rate,
                        **perf_record(trainer, rate),
                        "time": time.time(),
                    }
                )
                pbar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
            if step % spec.eval_every == 0 or step == end_step:
                check_losses()
                t_eval = time.perf_counter()
                record = evaluators(state.params, step, step == end_step)
                meta["eval_seconds"] += time.perf_counter() - t_eval
                log.append({"step": step, "images_seen": images_seen, **record})
                if batch:
                    rate = (step - step_start) / max(time.perf_counter() - t_start, 1e-9)
                    shown = {k: v for k, v in record.items() if not k.endswith("_std")}
                    print(
                        f"{desc} step {step}/{end_step} ({rate:.1f} steps/s): loss {float(out['loss']):.4f}, "
                        + ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
                    )
            stop = interrupt.agreed(step, spec.log_every)
            if step % ckpt_every == 0 or step == end_step or step in checkpoint_at or stop:
                check_losses()
                now = time.perf_counter()
                meta["device_seconds"] += (now - t_meta) * devices
                meta["wall_seconds"] += now - t_meta
                t_meta = now
                meta["data_position"] = {"step": step, "images_seen": images_seen}
                checkpoints.save(mngr, step, state, meta)
                meta["checkpoint_seconds"] += time.perf_counter() - now
            pbar.update(1)
            if stop and step < end_step:
                raise Preempted(step, interrupt.signame)
    return state, meta


def fit(
    trainer: Trainer,
    spec: LoopSpec,
    run_dir: Path,
    *,
    schedule: optax.Schedule,
    batches: Callable[[int], Iterator[dict]],
    evaluators: Evaluators,
    desc: str,
    start: Callable[[], tuple[TrainState, dict | None]] | None = None,
    end_step: int | None = None,
    protect: Iterable[int] = (),
    params_text: str | None = None,
) -> tuple[TrainState, dict]:
    """Resume run_dir from its newest readable checkpoint, or begin at `start()` (default: a fresh
    init), then run the loop to `end_step` (default spec.total_steps). `batches(step)` gives the
    batches from `step` on; `protect`ed steps are checkpointed and kept (branch points). Metrics go
    to metrics.jsonl and, from process 0, to TensorBoard event files beside it, with `params_text`."""
    end_step = spec.total_steps if end_step is None else end_step
    mngr = checkpoints.manager(
        run_dir / "ckpt", keep=spec.keep_checkpoints, keep_every=spec.keep_every, protect=protect
    )
    log = runs.MetricsLog(run_dir / "metrics.jsonl", events=jax.process_index() == 0)
    state, meta = checkpoints.restore_latest(mngr, trainer.abstract_state(), max_step=end_step)
    if state is None:
        state, meta = start() if start else (trainer.init_fn(), None)
    step = int(jax.device_get(state.step))
    log.truncate_after(step)
    if step and step < end_step:
        print(f"resuming {run_dir} from step {step}")
    if params_text and step < end_step:
        log.text("parameters", f"```\n{params_text}```", step=step)
    try:
        return train_loop(
            trainer,
            state,
            spec,
            schedule=schedule,
            batches=batches(step),
            end_step=end_step,
            log=log,
            mngr=mngr,
            evaluators=evaluators,
            desc=desc,
            checkpoint_at=protect,
            meta=meta,
        )
    finally:
        mngr.close()
