"""Copies of one model trained as one program: `jax.vmap` over a stacked parameter tree, each copy
with its own optimizer update, dropout keys and batch (vitscale.group trains runs with it).

Only the forward and backward passes are batched over the copies: one program whose products are a
few large ones instead of many small ones. Each copy's update is its own trainer's optax chain
applied to its slice (copies may differ in learning rate, schedule, weight decay), so its optimizer
state keeps the structure of the run trained alone and its checkpoints read back as that run's. The
copies axis is replicated over the mesh (every device holds every copy; each copy's batch is split
over the devices as when it trains alone), so a copy computes what it computes alone, to float32
rounding. Imports no TensorFlow (benchmarks/device_check.py times a group on bare accelerators).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vitscale import loop, sharding


@flax.struct.dataclass
class GroupState:
    step: jax.Array
    params: Any  # every leaf with a leading copies axis
    opt_states: tuple  # each copy's own (a weight decay of 0 gives a chain of another structure)


@dataclasses.dataclass
class GroupTrainer:
    """Each copy's own trainer (optimizer, init, shardings, as it would train alone) and the group's steps."""

    trainers: list[loop.Trainer]
    step: Any  # (GroupState, stacked batch) -> (GroupState, {"loss": [copies], "grad_norm": [copies]})
    stack: Any  # tuple of copies' TrainStates -> GroupState
    unstack: Any  # GroupState -> tuple of copies' TrainStates, each with its run's own shardings
    batch_sharding: NamedSharding  # [copies, batch, ...]: copies replicated, the batch as a run's


def _update(tx, g: GroupState, grads, loss, i: int) -> tuple[loop.TrainState, jax.Array]:
    """Copy i's own optimizer update on its slice, and its gradient norm; a copy whose loss or
    gradient is not finite keeps its state (frozen), so it never feeds a non-finite value on."""
    pick = lambda tree: jax.tree.map(lambda x: x[i], tree)
    old = loop.TrainState(g.step, pick(g.params), g.opt_states[i])
    mine = pick(grads)
    norm = optax.tree.norm(mine)
    new = loop.apply_gradients(tx, old, mine)
    keep = lambda a, b: jnp.where(jnp.isfinite(loss) & jnp.isfinite(norm), a, b)
    frozen = jax.tree.map(keep, new.params, old.params), jax.tree.map(keep, new.opt_state, old.opt_state)
    return loop.TrainState(new.step, *frozen), norm


def _group_step(trainers: list[loop.Trainer], grad, keys: jax.Array):
    """The group's step: every copy's gradient in one vmap, then each copy's own update."""

    def step(g: GroupState, batch: dict):
        rngs = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, g.step)
        losses, grads = jax.vmap(grad)(g.params, batch["image"], batch["label"], rngs)
        new = [_update(t.tx, g, grads, losses[i], i) for i, t in enumerate(trainers)]
        params = jax.tree.map(lambda *x: jnp.stack(x), *(s.params for s, _ in new))
        out = {"loss": losses, "grad_norm": jnp.stack([n for _, n in new])}
        return GroupState(g.step + 1, params, tuple(s.opt_state for s, _ in new)), out

    return step


def _stack(states: tuple[loop.TrainState, ...]) -> GroupState:
    params = jax.tree.map(lambda *x: jnp.stack(x), *(s.params for s in states))
    return GroupState(states[0].step, params, tuple(s.opt_state for s in states))


def make(trainers: list[loop.Trainer], mesh) -> GroupTrainer:
    """The compiled group of `trainers` (one model, one batch size; loop.make_trainer's, each with its
    own optimizer and seed) on `mesh`: copies replicated, each copy's arrays sharded as its run's
    (a leading copies axis on the parameters)."""
    first = trainers[0]
    grad = loop.gradient_fn(first.model, loop.LOSSES[first.loss], first.chains, mesh)
    keys = jnp.stack([t.dropout_key for t in trainers])
    stacked = jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)), first.state_shardings.params)
    group_sh = GroupState(first.state_shardings.step, stacked, tuple(t.state_shardings.opt_state for t in trainers))
    copies_sh = tuple(t.state_shardings for t in trainers)
    batch_sh = NamedSharding(mesh, P(None, sharding.AXES))

    def unstack(g: GroupState) -> tuple[loop.TrainState, ...]:
        pick = lambda i: jax.tree.map(lambda x: x[i], g.params)
        return tuple(loop.TrainState(g.step, pick(i), g.opt_states[i]) for i in range(len(trainers)))

    return GroupTrainer(
        trainers=trainers,
        step=jax.jit(
            _group_step(trainers, grad, keys),
            in_shardings=(group_sh, batch_sh),
            out_shardings=(group_sh, sharding.replicated(mesh)),
            donate_argnums=0,
        ),
        stack=jax.jit(_stack, out_shardings=group_sh),
        unstack=jax.jit(unstack, out_shardings=copies_sh),
        batch_sharding=batch_sh,
    )
