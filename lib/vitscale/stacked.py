"""Copies of one model trained as one program over a stacked parameter tree, each copy with its own
optimizer update, dropout keys and batch (vitscale.group trains runs with it).

On GPUs and TPUs the forward and backward passes are batched over the copies (one `jax.vmap`): a few
large products instead of many small ones. On a CPU each copy's gradient is its own chain of
operations, side by side in one program (backend.copies_side_by_side says why). The update is batched
too when the copies' optimizers differ only in schedule and weight decay (build.copies_optimizer: a
sweep's search); otherwise each copy's own trainer's optimizer is applied to its slice in turn.
Either way a copy's optimizer state keeps the structure of the run trained alone and its
checkpoints read back as that run's. The copies axis is replicated over the mesh (every device
holds every copy; each copy's batch is split over the devices as when it trains alone), so a copy
computes what it computes alone, to float32 rounding. Imports no TensorFlow
(benchmarks/device_check.py times a group on bare accelerators).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vitscale import backend, loop, sharding


@flax.struct.dataclass
class GroupState:
    step: jax.Array
    params: Any  # every leaf with a leading copies axis
    # Stacked like params when the copies share one optimizer (build.copies_optimizer); else a tuple of
    # each copy's own (a weight decay of 0 gives a chain of another structure).
    opt_states: Any


@dataclasses.dataclass
class GroupTrainer:
    """Each copy's own trainer (optimizer, init, shardings, as it would train alone) and the group's steps."""

    trainers: list[loop.Trainer]
    step: Any  # (GroupState, stacked batch) -> (GroupState, {"loss": [copies], "grad_norm": [copies]})
    stack: Any  # tuple of copies' TrainStates -> GroupState
    unstack: Any  # GroupState -> tuple of copies' TrainStates, each with its run's own shardings
    batch_sharding: NamedSharding  # [copies, batch, ...]: copies replicated, the batch as a run's


def _update(tx, step: jax.Array, params, opt_state, grads, loss) -> tuple[Any, Any, jax.Array]:
    """One copy's own optimizer update and its gradient norm; a copy whose loss or gradient is not
    finite keeps its state (frozen), so it never feeds a non-finite value on."""
    norm = optax.tree.norm(grads)
    new = loop.apply_gradients(tx, loop.TrainState(step, params, opt_state), grads)
    keep = lambda a, b: jnp.where(jnp.isfinite(loss) & jnp.isfinite(norm), a, b)
    return jax.tree.map(keep, new.params, params), jax.tree.map(keep, new.opt_state, opt_state), norm


def _pick(tree, i: int):
    """Copy i's slice of a stacked tree."""
    return jax.tree.map(lambda x: x[i], tree)


def copies_gradients(grad, side_by_side: bool) -> Any:
    """Every copy's (loss, gradient) from stacked parameters, batches and keys: one vmap, or (`side_by_side`)
    each copy's own chain of operations, the graph its run computes alone, side by side in one program."""
    if not side_by_side:
        return jax.vmap(grad)

    def each(params, images, labels, rngs):
        outs = [grad(_pick(params, i), images[i], labels[i], rngs[i]) for i in range(images.shape[0])]
        return jnp.stack([v for v, _ in outs]), jax.tree.map(lambda *x: jnp.stack(x), *(g for _, g in outs))

    return each


def _group_step(trainers: list[loop.Trainer], gradients, keys: jax.Array, shared_tx):
    """The group's step: every copy's gradient (`copies_gradients`), then the copies' updates: one vmapped
    update of the optimizer they share (`shared_tx(i)` is copy i's), or each copy's own in turn."""
    n = len(trainers)

    def step(g: GroupState, batch: dict):
        rngs = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, g.step)
        losses, grads = gradients(g.params, batch["image"], batch["label"], rngs)
        if shared_tx is not None:
            one = lambda i, *args: _update(shared_tx(i), g.step, *args)
            params, opt_states, norms = jax.vmap(one)(jnp.arange(n), g.params, g.opt_states, grads, losses)
        else:
            new = [
                _update(t.tx, g.step, _pick(g.params, i), g.opt_states[i], _pick(grads, i), losses[i])
                for i, t in enumerate(trainers)
            ]
            params = jax.tree.map(lambda *x: jnp.stack(x), *(p for p, _, _ in new))
            opt_states, norms = tuple(o for _, o, _ in new), jnp.stack([m for _, _, m in new])
        return GroupState(g.step + 1, params, opt_states), {"loss": losses, "grad_norm": norms}

    return step


def _stack(states: tuple[loop.TrainState, ...], shared: bool) -> GroupState:
    stack = lambda *x: jnp.stack(x)
    opt = tuple(s.opt_state for s in states)
    return GroupState(
        states[0].step, jax.tree.map(stack, *(s.params for s in states)), jax.tree.map(stack, *opt) if shared else opt
    )


def make(trainers: list[loop.Trainer], mesh, shared_tx=None) -> GroupTrainer:
    """The compiled group of `trainers` (one model, one batch size; loop.make_trainer's, each with its
    own optimizer and seed) on `mesh`: copies replicated, each copy's arrays sharded as its run's
    (a leading copies axis on the parameters, and on the optimizer states when the copies share one
    optimizer: `shared_tx`, build.copies_optimizer's)."""
    first, shared = trainers[0], shared_tx is not None
    apart = backend.copies_side_by_side(mesh.devices.flat[0].platform)
    # Copies side by side need fewer gradient chains each; with dropout each keeps its run's (the chains
    # draw the masks), and so does a run whose chains are set.
    side_by_side = len(trainers) if apart and not first.model.dropout else 1
    grad = loop.gradient_fn(first.model, loop.LOSSES[first.loss], first.chains, mesh, side_by_side)
    gradients = copies_gradients(grad, apart)
    keys = jnp.stack([t.dropout_key for t in trainers])
    add_axis = lambda tree: jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)), tree)
    opt_sh = (
        add_axis(first.state_shardings.opt_state) if shared else tuple(t.state_shardings.opt_state for t in trainers)
    )
    group_sh = GroupState(first.state_shardings.step, add_axis(first.state_shardings.params), opt_sh)
    copies_sh = tuple(t.state_shardings for t in trainers)
    batch_sh = NamedSharding(mesh, P(None, sharding.AXES))

    def unstack(g: GroupState) -> tuple[loop.TrainState, ...]:
        opt = (lambda i: _pick(g.opt_states, i)) if shared else (lambda i: g.opt_states[i])
        return tuple(loop.TrainState(g.step, _pick(g.params, i), opt(i)) for i in range(len(trainers)))

    return GroupTrainer(
        trainers=trainers,
        step=jax.jit(
            _group_step(trainers, gradients, keys, shared_tx),
            in_shardings=(group_sh, batch_sh),
            out_shardings=(group_sh, sharding.replicated(mesh)),
            donate_argnums=0,
        ),
        stack=jax.jit(functools.partial(_stack, shared=shared), out_shardings=group_sh),
        unstack=jax.jit(unstack, out_shardings=copies_sh),
        batch_sharding=batch_sh,
    )
