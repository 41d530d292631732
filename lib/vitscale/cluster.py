"""The cluster as a sweep sees it, through submitit: an executor with the resources a sweep file's
`slurm:` mapping asks for, a job's state, and a job put back in the queue. What a job runs, and
which runs are submitted, is the sweep's (`vitscale.sweep.submit`, `sweep.run_job`).

Why submitit rather than hand-written sbatch arrays: it writes and submits the job scripts, pickles
the job function with its arguments, handles SLURM's signals (preemption, time limits) and gives
each process its rank, and its LocalExecutor runs the same jobs as real local processes (tests,
and machines without SLURM).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import submitit

from vitscale import config

# SLURM sends this signal PREEMPT_WARNING_S seconds before the time limit (`--signal`): the run saves
# a checkpoint at the next step, stops, and the job requeues itself (submitit's own USR2 handler
# would requeue before the kernel has saved).
PREEMPT_SIGNAL = "USR1"
PREEMPT_WARNING_S = 120
LAUNCHERS = ("local", "slurm", "submitit-local")  # threads on this machine | SLURM | submitit's local processes
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


def executor(folder: Path, launcher: str, resources: config.SlurmResources) -> submitit.Executor:
    """A submitit executor for `launcher` ("slurm" or "submitit-local") with one process per node."""
    cluster = {"slurm": "slurm", "submitit-local": "local"}[launcher]
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = dict(timeout_min=resources.time_min, nodes=resources.nodes, tasks_per_node=1)
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    if resources.cpus_per_task:
        params["cpus_per_task"] = resources.cpus_per_task
    if resources.mem_gb:
        params["mem_gb"] = resources.mem_gb
    if cluster == "slurm":
        for key in ("partition", "account", "qos", "constraint", "setup"):
            if value := getattr(resources, key):
                params[f"slurm_{key}"] = value
        params["slurm_additional_parameters"] = {"signal": f"{PREEMPT_SIGNAL}@{PREEMPT_WARNING_S}", "requeue": True}
    ex.update_parameters(name="vitscale", **params)
    return ex


def job_state(folder: Path, launcher: str, job_id: str | None) -> str:
    """The scheduler's word on a run's job: SLURM's state (sacct), or for local processes whether it lives."""
    if not job_id:
        return "UNKNOWN"
    if launcher == "slurm":
        return submitit.SlurmJob(folder, job_id).state
    try:
        os.kill(int(job_id), 0)  # a local job's id is its process id
        return "RUNNING"
    except (OSError, ValueError):
        return "GONE"


def requeue(job_id: str) -> None:
    """Put this SLURM job back in the queue (it resumes from the run's newest checkpoint)."""
    subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=60)
