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

from vitscale import runs


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
    with runs.writing(Path(mngr.directory) / str(step), f"the checkpoint at step {step}"):
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
