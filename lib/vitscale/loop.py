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

from vitscale import backend, checkpoints, config, metrics, perf, progress, runs, sharding
from vitscale.models import flops, vit

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
    dropout_key: jax.Array | None = None  # folded with the step: each step's dropout (a group's copies keep theirs)
    loss: str = "softmax_xent"  # the LOSSES entry the steps use
    chains: int | None = None  # gradient chains per device (None: backend.default_chains for the batch)

    def abstract_state(self) -> TrainState:
        """The state's shapes, dtypes and shardings (what a checkpoint restores into)."""
        abstract = jax.eval_shape(self.init_fn)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_shardings
        )


def gradient_fn(model: vit.ViT, loss_fn, chains: int | None, mesh, side_by_side: int = 1) -> Callable:
    """(params, images, labels, rng) -> (mean loss, gradients) over `chains` gradient chains per device
    (None: backend.default_chains for the batch, with `side_by_side` copies of this function in one
    program). A group of runs computes each copy's gradient with this very function (vitscale.stacked)."""

    def objective(params, images, labels, rng):
        logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        return jnp.mean(loss_fn(logits, labels))

    # Jitted on its own so that several chains trace the model once (XLA inlines the call).
    value_and_grad = jax.jit(jax.value_and_grad(objective))
    platform = mesh.devices.flat[0].platform

    def fn(params, images, labels, rng):
        n = chains or backend.default_chains(images.shape[0] // mesh.size, platform, side_by_side)
        return backend.chained(value_and_grad, n)(params, images, labels, rng)

    return fn


def apply_gradients(tx: optax.GradientTransformation, state: TrainState, grads) -> TrainState:
    """The optimizer update: the next step's state."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def _train_step(model: vit.ViT, tx, loss_fn, dropout_key, chains: int | None, mesh) -> Callable:
    """The training step (not yet jitted): `chains` gradient chains per device, then the optimizer update."""
    grad = gradient_fn(model, loss_fn, chains, mesh)

    def train_step(state, batch):
        rng = jax.random.fold_in(dropout_key, state.step)
        value, grads = grad(state.params, batch["image"], batch["label"], rng)
        return apply_gradients(tx, state, grads), {"loss": value, "grad_norm": optax.tree.norm(grads)}

    return train_step


def _eval_steps(model: vit.ViT, loss_fn) -> tuple[Callable, Callable]:
    """The masked evaluation step (sums of loss, correct and count) and the pre-logits features."""

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

    return eval_step, features


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
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    dummy = jnp.zeros((1, *image_shape), jnp.float32)

    def start_from(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    def init():
        return start_from(model.init(init_key, dummy)["params"])

    shardings = sharding.tree_shardings(jax.eval_shape(init), mesh)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)

    train_step = _train_step(model, tx, LOSSES[loss], dropout_key, chains, mesh)
    eval_step, features = _eval_steps(model, LOSSES[loss])
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
        dropout_key=dropout_key,
        loss=loss,
        chains=chains,
    )


def evaluate(trainer: Trainer, params, batches: Iterable[dict]) -> dict[str, float]:
    """Loss and top-1 accuracy over a whole split's masked batches (data.pipeline.eval_batches, sized by
    sharding.eval_batch_size): {"loss": ..., "acc": ...}."""
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
        overall = flops.training(trainer.forward_flops, last) / (meta["device_seconds"] * trainer.peak.flops_per_s)
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


class Interrupt:
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


class _Losses:
    """Step losses left on the device, fetched and checked finite only at log, eval and checkpoint steps."""

    def __init__(self, mngr):
        self.mngr = mngr
        self.pending: list[tuple[int, Any]] = []

    def add(self, step: int, loss) -> None:
        self.pending.append((step, loss))

    def check(self) -> None:
        for s, loss in self.pending:
            if not math.isfinite(float(loss)):
                good = max([0, *[c for c in self.mngr.all_steps() if c < s]])
                raise NonFiniteLoss(
                    f"loss is {float(loss)} at step {s}; the run stopped there. The last good checkpoint is at "
                    f"step {good}. Lower lr or raise warmup_steps."
                )
        self.pending.clear()


class Ledger:
    """The meta saved with every checkpoint: the data position and the seconds spent (device, wall,
    evaluation, checkpoints) summed over every session of the run. `share`: the part of the devices the
    run had (a copy of a group of n: 1/n), so a group's copies' device-seconds add up to the group's."""

    def __init__(self, meta: dict | None, share: float = 1.0):
        zero = {"device_seconds": 0.0, "wall_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0}
        self.meta = {**zero, **(meta or {})}
        self.devices = jax.device_count() * share
        self.mark = time.perf_counter()

    def evaluate(self, evaluators: Evaluators, params, step: int, final: bool) -> dict[str, float]:
        t = time.perf_counter()
        record = evaluators(params, step, final)
        self.meta["eval_seconds"] += time.perf_counter() - t
        return record

    def checkpoint(self, mngr, state: TrainState, step: int, images_seen: int) -> None:
        now = time.perf_counter()
        self.meta["device_seconds"] += (now - self.mark) * self.devices
        self.meta["wall_seconds"] += now - self.mark
        self.mark = now
        self.meta["data_position"] = {"step": step, "images_seen": images_seen}
        checkpoints.save(mngr, step, state, self.meta)
        self.meta["checkpoint_seconds"] += time.perf_counter() - now


class Rate:
    """Images (or steps) per second since the last reading, and since the meter started."""

    def __init__(self, step: int):
        self.start = self.last = (time.perf_counter(), step)

    def since_last(self, step: int, per_step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.last[1]) * per_step / max(now - self.last[0], 1e-9)
        self.last = (now, step)
        return rate

    def since_start(self, step: int) -> float:
        return (step - self.start[1]) / max(time.perf_counter() - self.start[0], 1e-9)


@dataclasses.dataclass(frozen=True)
class Session:
    """What one loop session writes to and calls: fixed for the session, unlike the state and step."""

    trainer: Trainer
    spec: LoopSpec
    schedule: optax.Schedule
    log: runs.MetricsLog
    mngr: Any
    evaluators: Evaluators
    desc: str
    checkpoint_at: frozenset[int]

    def train_row(self, step: int, out: dict, rate: float) -> dict:
        """A logged training row: loss, gradient norm, learning rate, throughput and MFU."""
        return {
            "step": step,
            "images_seen": step * self.spec.batch_size,
            metrics.TRAIN_LOSS: float(out["loss"]),
            metrics.GRAD_NORM: float(out["grad_norm"]),
            metrics.LR: float(self.schedule(step - 1)),
            metrics.IMAGES_PER_S: rate,
            **perf_record(self.trainer, rate),
            "time": time.time(),
        }

    def checkpoint_due(self, step: int, end_step: int, stop: bool) -> bool:
        every = self.spec.checkpoint_every or self.spec.eval_every
        return step % every == 0 or step == end_step or step in self.checkpoint_at or stop


def eval_line(desc: str, step: int, end_step: int, steps_per_s: float, loss, record: dict) -> str:
    """A batch report's line per evaluation (it has no progress bar); spreads (_std) left out."""
    shown = {k: v for k, v in record.items() if not k.endswith("_std")}
    return f"{desc} step {step}/{end_step} ({steps_per_s:.1f} steps/s): loss {float(loss):.4f}, " + ", ".join(
        f"{k} {v:.4f}" for k, v in shown.items()
    )


def train_loop(
    session: Session, state: TrainState, batches: Iterator[dict], end_step: int, meta: dict | None = None
) -> tuple[TrainState, dict]:
    """Steps until `end_step`: log, evaluate, checkpoint. `meta` (saved with every checkpoint)
    carries the data position and the seconds spent so far, over every session of the run."""
    trainer, spec = session.trainer, session.spec
    step = int(jax.device_get(state.step))
    losses, ledger, rate = _Losses(session.mngr), Ledger(meta), Rate(step)
    batch = progress.batch_mode()  # a batch report gets a line per evaluation instead of a progress bar
    bar = progress.bar(total=end_step, initial=step, desc=session.desc, unit="step", disable=batch)
    with bar as pbar, Interrupt() as interrupt:
        while step < end_step:
            state, out = trainer.train_step(state, sharding.put_batch(next(batches), trainer.mesh))
            step += 1
            losses.add(step, out["loss"])
            final = step == end_step
            if step % spec.log_every == 0 or final:
                losses.check()
                row = session.train_row(step, out, rate.since_last(step, spec.batch_size))
                session.log.append(row)
                pbar.set_postfix(
                    loss=f"{row[metrics.TRAIN_LOSS]:.4f}", img_s=f"{row[metrics.IMAGES_PER_S]:.0f}", refresh=False
                )
            if step % spec.eval_every == 0 or final:
                losses.check()
                record = ledger.evaluate(session.evaluators, state.params, step, final)
                session.log.append({"step": step, "images_seen": step * spec.batch_size, **record})
                if batch:
                    print(eval_line(session.desc, step, end_step, rate.since_start(step), out["loss"], record))
            stop = interrupt.agreed(step, spec.log_every)
            if session.checkpoint_due(step, end_step, stop):
                losses.check()
                ledger.checkpoint(session.mngr, state, step, step * spec.batch_size)
            pbar.update(1)
            if stop and not final:
                raise Preempted(step, interrupt.signame)
    return state, ledger.meta


def open_run(
    trainer: Trainer, spec: LoopSpec, run_dir: Path, *, protect: Iterable[int] = (), end_step: int
) -> tuple[Any, runs.MetricsLog, TrainState | None, dict | None]:
    """A run folder's checkpoint manager and metrics log, and its newest readable checkpoint at or
    before `end_step` as (state, meta), or (None, None)."""
    mngr = checkpoints.manager(
        run_dir / "ckpt", keep=spec.keep_checkpoints, keep_every=spec.keep_every, protect=protect
    )
    log = runs.MetricsLog(run_dir / "metrics.jsonl", events=jax.process_index() == 0)
    state, meta = checkpoints.restore_latest(mngr, trainer.abstract_state(), max_step=end_step)
    return mngr, log, state, meta


def begin_log(log: runs.MetricsLog, run_dir: Path, step: int, end_step: int, params_text: str | None) -> None:
    """Drop the records a resumed run re-logs, say that it resumes, and put its parameters in the events."""
    log.truncate_after(step)
    if step and step < end_step:
        print(f"resuming {run_dir} from step {step}")
    if params_text and step < end_step:
        log.text("parameters", f"```\n{params_text}```", step=step)


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
    mngr, log, state, meta = open_run(trainer, spec, run_dir, protect=protect, end_step=end_step)
    if state is None:
        state, meta = start() if start else (trainer.init_fn(), None)
    step = int(jax.device_get(state.step))
    begin_log(log, run_dir, step, end_step, params_text)
    try:
        session = Session(trainer, spec, schedule, log, mngr, evaluators, desc, checkpoint_at=frozenset(protect))
        return train_loop(session, state, batches(step), end_step, meta)
    finally:
        mngr.close()
