"""Sweeps on a cluster through submitit: one job per unfinished run, with the resources the sweep
file's `slurm:` mapping asks for.

Why submitit rather than hand-written sbatch arrays: it writes and submits the job scripts, pickles
the job function with its arguments, handles SLURM's signals (preemption, time limits) and gives
each process its rank, and its LocalExecutor runs the same jobs as real local processes (tests,
and machines without SLURM). Run ids, idempotence and the status index are the local runner's
(`vitscale.sweep`): a run that is done is never resubmitted; one whose job is gone (killed,
failed, preempted) is resubmitted and resumes from its newest checkpoint.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import submitit

from vitscale import config, notebooks, runs, sweep

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


def run_job(kind: str, params: dict[str, Any], folder: str) -> str:
    """What one job runs. Process 0 executes the notebook into the run folder (the report); the other
    processes of a multi-node run call the program directly and join the same JAX job."""
    folder_path = Path(folder)
    env = submitit.JobEnvironment()
    if env.global_rank != 0:
        notebooks.PROGRAMS[kind].run(config.validate(config.KINDS[kind], params), folder_path)
        return "done"
    try:
        with runs.writer(folder_path), notebooks.forwarding_signals():
            return _run_locked(kind, params, folder_path, env)
    except runs.RunBusy as e:
        print(f"error: {e}")
        return "failed"


def _requeue(job_id: str) -> None:
    """Put this SLURM job back in the queue (it resumes from the run's newest checkpoint)."""
    subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=60)


def _run_locked(kind: str, params: dict[str, Any], folder_path: Path, env: submitit.JobEnvironment) -> str:
    runs.Status.running(job=env.job_id, host=env.hostname).write(folder_path)
    try:
        notebooks.execute(kind, params, folder_path, quiet=True)
    except Exception as e:  # noqa: BLE001 - a failed run is recorded, as by the local runner
        if reason := notebooks.preempted_step(e):
            runs.Status.interrupted(reason, job=env.job_id).write(folder_path)
            if os.environ.get("SLURM_JOB_ID"):
                _requeue(os.environ["SLURM_JOB_ID"])
            return "interrupted"
        if reason := notebooks.diverged_reason(e):
            runs.Status.diverged(reason, job=env.job_id).write(folder_path)
            return "diverged"
        runs.Status.failed(e, job=env.job_id).write(folder_path)
        return "failed"
    runs.Status.done(job=env.job_id).write(folder_path)
    return "done"


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


def submit(
    spec: sweep.Sweep,
    out: Path,
    *,
    launcher: str,
    shard: tuple[int, int] = (0, 1),
    retry_failed: bool = True,
    wait: bool = False,
) -> dict[str, str]:
    """Submit this shard's unfinished runs, one job each; with `wait`, block until they end. A run
    whose job still lives (pending or running) is left alone."""
    out.mkdir(parents=True, exist_ok=True)
    sweep.record_search(spec, out)
    jobs_dir = out / ".submitit"
    ex = executor(jobs_dir, launcher, spec.slurm)
    jobs = []
    for r in sweep.shard_of(spec, shard):
        folder = out / r.run_id
        status = runs.status_of(folder)
        if status in ("done", "running", "diverged") or (status == "failed" and not retry_failed):
            continue
        record = runs.Status.read(folder)
        if status in ("submitted", "interrupted") and job_state(jobs_dir, launcher, record and record.job) in ALIVE:
            continue
        runs.claim(folder, config.validate(config.KINDS[spec.notebook], r.params))
        job = ex.submit(run_job, spec.notebook, r.params, str(folder))
        runs.Status.submitted_as(job.job_id, launcher).write(folder)
        jobs.append(job)
        print(f"{r.run_id}: submitted job {job.job_id} ({launcher})")
    sweep.write_index(out, spec)
    if wait:
        for job in jobs:
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - the job died (killed, out of time): its run resumes on rerun
                print(f"job {job.job_id} ended without a result: {type(e).__name__}: {str(e)[:300]}")
            sweep.write_index(out, spec)
    return sweep.write_index(out, spec)


def statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """sweep.statuses with the scheduler's state of each run's job."""
    rows = sweep.statuses(sweep_dir)
    for r in rows:
        record = runs.Status.read(sweep_dir / r["run"])
        if r["job"]:
            r["scheduler"] = job_state(sweep_dir / ".submitit", (record and record.launcher) or "local", r["job"])
    return rows
