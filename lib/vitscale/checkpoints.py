"""Orbax checkpoints of a run: which steps are kept, saving, and restoring the newest readable one."""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from vitscale import files


def manager(
    path: Path, *, keep: int = 2, keep_every: int | None = None, protect: Iterable[int] = ()
) -> ocp.CheckpointManager:
    """Keeps the last `keep` checkpoints, every `keep_every`-th step, and the steps in `protect`
    (those cooldown branches start from)."""
    policies = [cm.LatestN(keep)]
    if keep_every:
        policies.append(cm.EveryNSteps(keep_every))
    if protect:
        policies.append(cm.CustomSteps(sorted(protect)))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies), create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(path.absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """The state and its metadata (data position, device-seconds) at `step`, unless already saved."""
    if step in mngr.all_steps():
        return
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    with files.writing(Path(mngr.directory) / str(step), f"the checkpoint at step {step}"):
        try:
            mngr.save(step, args=args, force=True)
            mngr.wait_until_finished()
        except Exception:
            # A half-written save is a temporary folder orbax never renames: clear it for the next try.
            if jax.process_index() == 0:
                for tmp in Path(mngr.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(tmp, ignore_errors=True)
            raise


def restore_latest(
    mngr: ocp.CheckpointManager, abstract_state: Any, max_step: int | None = None, move_aside: bool = True
) -> tuple[Any, dict | None]:
    """The newest readable checkpoint (at or before max_step) as (state, meta), or (None, None).

    An unreadable checkpoint is skipped with a warning for the previous one and, in a run's own
    folder (`move_aside`), renamed `<step>.unreadable-<time>`: kept for inspection, out of the way of
    new saves. Readers of another run's folder pass move_aside=False."""
    for step in sorted(mngr.all_steps(), reverse=True):
        if max_step is not None and step > max_step:
            continue
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
            out = mngr.restore(step, args=args)
            return out["state"], out["meta"]
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
            bad = Path(mngr.directory) / str(step)
            aside = bad.with_name(f"{step}.unreadable-{int(time.time())}")
            warnings.warn(
                f"checkpoint at step {step} in {mngr.directory} is unreadable ({type(e).__name__}: {str(e)[:200]}); "
                f"{'moved to ' + aside.name + ', ' if move_aside else ''}trying the previous one",
                stacklevel=2,
            )
            if move_aside and jax.process_index() == 0 and bad.exists():
                bad.rename(aside)
                mngr.reload()
    return None, None


def _newest_first(ckpt_dir: Path) -> list[int]:
    return sorted((int(p.name) for p in Path(ckpt_dir).iterdir() if p.name.isdigit()), reverse=True)


def newer_than(ckpt_dir: Path, step: int | None) -> list[int]:
    """The saved steps in `ckpt_dir` newer than `step` (all of them for None), newest first: those a
    reader of the newest readable checkpoint skipped as unreadable."""
    return [s for s in _newest_first(ckpt_dir) if step is None or s > step]


def param_shapes(ckpt_dir: Path) -> tuple[dict[str, Any], int] | tuple[None, None]:
    """(the parameter tree's shapes, step) of the newest checkpoint whose metadata reads, read
    without restoring any array (e.g. the head's class count), or (None, None)."""
    for step in _newest_first(ckpt_dir):
        try:
            tree = ocp.StandardCheckpointer().metadata(Path(ckpt_dir).absolute() / str(step) / "state")
            tree = tree.item_metadata.tree
        except Exception:  # noqa: BLE001,S112 - an unreadable checkpoint: try the previous one
            continue
        return jax.tree.map(lambda m: tuple(m.shape), tree["params"]), step
    return None, None


def restore_params(ckpt_dir: Path) -> tuple[Any, int] | tuple[None, None]:
    """(params as numpy arrays, step) of the newest readable checkpoint in `ckpt_dir` of another run,
    without an optimizer to shape the restore (the saved tree is read as it is), or (None, None)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    for step in _newest_first(ckpt_dir):
        path = Path(ckpt_dir).absolute() / str(step) / "state"
        try:
            with ocp.StandardCheckpointer() as ckptr:
                tree = ckptr.metadata(path).item_metadata.tree
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
                state = ckptr.restore(path, target)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
            warnings.warn(
                f"checkpoint at step {step} in {ckpt_dir} is unreadable ({type(e).__name__}); trying the previous one",
                stacklevel=2,
            )
            continue
        return jax.device_get(state["params"]), step
    return None, None
