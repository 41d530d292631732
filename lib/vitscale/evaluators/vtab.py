"""VTAB-1k results: the mean over the 19 tasks and over each group (natural, specialized, structured),
as the ViT papers report them; the task table and its splits are data (vitscale.data.vtab)."""

from __future__ import annotations

import numpy as np

from vitscale.data.vtab import GROUPS, TASKS


def summarize(per_task: dict[str, float]) -> dict[str, float | None]:
    """{"mean": over the VTAB tasks, "natural"|"specialized"|"structured": group means} of per-task
    accuracies (None where there is no result). Stand-ins are not VTAB: they get their own
    "standin" mean and count in no other."""
    groups: dict[str, list[float]] = {}
    for name, acc in per_task.items():
        groups.setdefault(TASKS[name].group if name in TASKS else "standin", []).append(acc)
    vtab = [a for g in GROUPS for a in groups.get(g, [])]
    out: dict[str, float | None] = {"mean": float(np.mean(vtab)) if vtab else None}
    for g in (*GROUPS, *(["standin"] if "standin" in groups else [])):
        out[g] = float(np.mean(groups[g])) if g in groups else None
    return out
