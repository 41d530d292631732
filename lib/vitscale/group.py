"""Runs trained as one program: the runs of a sweep that differ only in learning rate, weight decay,
seed or warmup, trained together (vitscale.stacked: one program over a stacked parameter tree).

Each copy keeps what makes it its own run: its optimizer (its own optax chain, with its schedule and
weight decay, on its slice of the stack), its init and dropout keys (its seed), its batches
(build.batches of its own parameters) and its run folder (metrics.jsonl and ckpt/, written as
loop.fit writes them, one checkpoint per copy). The copies axis is replicated over the mesh, so a
copy computes what it computes alone, to float32 rounding (tests/test_group.py).

What the group leaves, each run's own notebook does alone afterwards (vitscale.sweep): it finds the
main run finished and only trains its cooldown branches and writes its summary and report. A copy
whose loss goes non-finite is frozen (its update is dropped inside the step, so nothing non-finite
reaches the others) and stops writing at its last good checkpoint; its notebook resumes it alone,
meets the same loss and records the run as diverged, as it would have alone.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import numpy as np

from vitscale import allocator, build, config, loop, progress, sharding, stacked
from vitscale import train as pretrain

# What copies of one group may differ in; every other resolved parameter is the group's.
FREE_KEYS = ("name", "lr", "weight_decay", "seed", "warmup_steps")
DEFAULT_SIZE = 8  # copies per program unless the sweep file's `group:` says otherwise


def default_size() -> int:
    """Copies per program when the sweep file does not say: DEFAULT_SIZE on an accelerator, 0 (every run
    alone) on a CPU, where a sweep of 16 grouped runs took as long as with two runs side by side (531 s
    against 546 s with --workers 2: both fill the cores), so `group: true` is the sweep file's choice
    there (benchmarks/README.md, "Runs trained as one program")."""
    return DEFAULT_SIZE if jax.default_backend() != "cpu" else 0


def key_of(cfg: config.PretrainConfig) -> str | None:
    """What the copies of a group share (every parameter but FREE_KEYS), or None for a run that
    trains alone: a multi-host run, or one that starts from a weights file."""
    if cfg.init_from or (cfg.num_processes or 1) > 1 or cfg.coordinator_address:
        return None
    params = cfg.model_dump(mode="json")
    return json.dumps({k: v for k, v in params.items() if k not in FREE_KEYS}, sort_keys=True)


def plan(cfgs: dict[str, config.PretrainConfig], size: int = DEFAULT_SIZE) -> list[list[str]]:
    """The groups among `cfgs` (name -> config): runs with one key_of, in chunks of at most `size`
    as even as they go; only groups of two or more (a single run trains alone)."""
    by_key: dict[str, list[str]] = {}
    for name, cfg in cfgs.items():
        if (key := key_of(cfg)) is not None:
            by_key.setdefault(key, []).append(name)
    groups = []
    for names in by_key.values():
        chunks = -(-len(names) // size)
        bounds = [round(i * len(names) / chunks) for i in range(chunks + 1)]
        groups += [names[a:b] for a, b in zip(bounds, bounds[1:]) if b - a >= 2]
    return groups


@dataclasses.dataclass(frozen=True)
class Member:
    """A run of a group: its checked parameters and its run folder (claimed by the caller)."""

    cfg: config.PretrainConfig
    out: Path


def make_group_trainer(cfgs: Sequence[config.PretrainConfig], mesh, num_classes: int) -> stacked.GroupTrainer:
    """The compiled group of `cfgs` (one key_of) on `mesh`: each copy's own trainer (build.trainer)."""
    return stacked.make([build.trainer(c, mesh, num_classes) for c in cfgs], mesh, build.copies_optimizer(cfgs))


def batches(cfgs: Sequence[config.PretrainConfig], train_split, pipe, step: int) -> Iterator[dict[str, np.ndarray]]:
    """Each copy's own batches from `step` on (build.batches: a function of its seed and the step),
    stacked [copies, batch, ...]."""
    streams = [build.batches(c, train_split, pipe)(step) for c in cfgs]
    while True:
        parts = [next(s) for s in streams]
        yield {k: np.stack([p[k] for p in parts]) for k in parts[0]}


# ----------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Copy:
    """A run of the group as the loop sees it: where it writes (its loop.Session), the seconds it
    spent (its loop.Ledger), and why it stopped (None while it trains)."""

    member: Member
    session: loop.Session
    ledger: loop.Ledger
    stopped: str | None = None


def _check(copies: list[Copy], pending: list[tuple[int, jax.Array]]) -> None:
    """Stop each copy whose loss went non-finite at a pending step, with the words loop.NonFiniteLoss
    uses alone; the others go on."""
    host = [(s, np.asarray(jax.device_get(v))) for s, v in pending]
    pending.clear()
    for i, c in enumerate(copies):
        bad = next(((s, float(v[i])) for s, v in host if not np.isfinite(v[i])), None)
        if c.stopped is None and bad is not None:
            good = max([0, *[k for k in c.session.mngr.all_steps() if k < bad[0]]])
            c.stopped = f"loss is {bad[1]} at step {bad[0]}; the last good checkpoint is at step {good}"
            print(f"{c.member.cfg.name}: {c.stopped}; the group goes on without it (its own run records it)")


def _log_eval_save(
    g: stacked.GroupTrainer, copies: list[Copy], gstate, out: dict, step: int, rate: loop.Rate, save: bool
):
    """What loop.train_loop does after a step, for every copy still training: its training row at log
    steps, its evaluation at eval steps (and, in a batch run, which has no progress bar, its line), its
    checkpoint when `save`."""
    spec = copies[0].session.spec
    final = step == spec.total_steps
    evaluate = step % spec.eval_every == 0 or final
    live = [(i, c) for i, c in enumerate(copies) if c.stopped is None]
    host = jax.device_get(out)
    if step % spec.log_every == 0 or final:
        images_per_s = rate.since_last(step, spec.batch_size)
        for i, c in live:
            c.session.log.append(c.session.train_row(step, {k: v[i] for k, v in host.items()}, images_per_s))
    if not (evaluate or save):
        return
    states = g.unstack(gstate)
    for i, c in live if evaluate else ():
        record = c.ledger.evaluate(c.session.evaluators, states[i].params, step, final)
        c.session.log.append({"step": step, "images_seen": step * spec.batch_size, **record})
        if progress.batch_mode():
            print(
                loop.eval_line(c.session.desc, step, spec.total_steps, rate.since_start(step), host["loss"][i], record)
            )
    for i, c in live if save else ():
        c.ledger.checkpoint(c.session.mngr, states[i], step, step * spec.batch_size)


def train_loop(
    g: stacked.GroupTrainer, copies: list[Copy], gstate: stacked.GroupState, stream: Iterator[dict], step: int
) -> None:
    """Steps to the end for every copy that stays finite: log, evaluate and checkpoint each copy
    at the steps loop.train_loop would. A stop signal saves every copy, then raises loop.Preempted."""
    spec = copies[0].session.spec
    end, pending, rate = spec.total_steps, [], loop.Rate(step)
    desc = f"group of {len(copies)}"
    bar = progress.bar(total=end, initial=step, desc=desc, unit="step", disable=progress.batch_mode())
    with bar as pbar, loop.Interrupt() as interrupt:
        while step < end and any(c.stopped is None for c in copies):
            gstate, out = g.step(gstate, jax.device_put(next(stream), g.batch_sharding))
            step += 1
            pending.append((step, out["loss"]))
            stop = interrupt.agreed(step, spec.log_every)
            logged = step % spec.log_every == 0 or step == end
            save = copies[0].session.checkpoint_due(step, end, stop)
            if logged or save or step % spec.eval_every == 0:
                _check(copies, pending)
                _log_eval_save(g, copies, gstate, out, step, rate, save)
            pbar.update(1)
            if stop and step < end:
                raise loop.Preempted(step, interrupt.signame)


# ----------------------------------------------------------------------------- the entry point
def _resume_step(opened: list[tuple], total: int) -> int:
    """The step the group starts at: the one most unfinished copies resume from (the newer on a tie)."""
    steps = [int(state.step) if state is not None else 0 for _, _, state, _ in opened]
    counts = collections.Counter(s for s in steps if s < total)
    return max(counts, key=lambda s: (counts[s], s)) if counts else total


def _open(trainers: list[loop.Trainer], members: Sequence[Member]) -> tuple[list[tuple], int]:
    """Each member's folder opened (loop.open_run): (trainer, member, opened) of those resuming from
    the group's step (or starting), and that step. The others are closed, left to finish alone."""
    cfg = members[0].cfg
    spec, protect = build.loop_spec(cfg), frozenset(b.start for b in cfg.cooldown_branches)
    opened = [
        loop.open_run(t, spec, m.out, protect=protect, end_step=spec.total_steps) for t, m in zip(trainers, members)
    ]
    start = _resume_step(opened, spec.total_steps)
    joined = []
    for t, m, o in zip(trainers, members, opened):
        if (int(o[2].step) if o[2] is not None else 0) == start < spec.total_steps:
            joined.append((t, m, o))
        else:
            o[0].close()
    return joined, start


def _copies(
    g: stacked.GroupTrainer, joined: list[tuple], start: int, data: tuple
) -> tuple[list[Copy], list[loop.TrainState]]:
    """The loop's Copy of each joined member (each with its ledger's share of the devices) and its state."""
    _, test, val, pipe = data
    copies, states = [], []
    for t, m, (mngr, log, state, meta) in joined:
        spec, protect = build.loop_spec(m.cfg), frozenset(b.start for b in m.cfg.cooldown_branches)
        loop.begin_log(log, m.out, start, spec.total_steps, config.dump(m.cfg))
        evaluators = build.evaluators_of(m.cfg, g.trainers[0], test, pipe, val)  # one compiled eval for all
        session = loop.Session(t, spec, build.schedule(m.cfg), log, mngr, evaluators, m.cfg.name, protect)
        ledger = loop.Ledger({**(meta or {}), "group_copies": len(joined)}, share=1 / len(joined))
        copies.append(Copy(m, session, ledger))
        states.append(state if state is not None else t.init_fn())
    return copies, states


def train(members: Sequence[Member]) -> list[Member]:
    """Train the main runs of `members` (one key_of, their folders claimed) as one program into their
    folders, resuming from their checkpoints. Returns the members trained to the end; the others
    (diverged, or resuming from another step) are left for their own runs to finish alone."""
    cfgs = [m.cfg for m in members]
    data = pretrain.load_data(cfgs[0])
    mesh = sharding.make_mesh(cfgs[0].mesh)
    if advice := allocator.check(mesh.devices.flat[0].platform):  # as a run alone warns (train.run)
        warnings.warn(advice, stacklevel=2)
    trainers = [build.trainer(c, mesh, data[0].num_classes) for c in cfgs]
    joined, start = _open(trainers, members)
    if len(joined) < 2:  # nothing left to share: the runs finish alone
        for _, _, (mngr, *_) in joined:
            mngr.close()
        return []
    g = stacked.make([t for t, _, _ in joined], mesh, build.copies_optimizer([m.cfg for _, m, _ in joined]))
    copies, states = _copies(g, joined, start, data)
    try:
        stream = batches([c.member.cfg for c in copies], data[0], data[3], start)
        train_loop(g, copies, g.stack(tuple(states)), stream, start)
    finally:
        for c in copies:
            c.session.mngr.close()
    return [c.member for c in copies if c.stopped is None]
