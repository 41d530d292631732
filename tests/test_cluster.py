"""Sweeps through submitit: job scripts SLURM's sbatch accepts, and the same runs, statuses and
summaries through submitit's local executor (real processes) as through the local runner; a
killed job is resubmitted on rerun and resumes from its checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import system_tool
from vitscale import cluster, config, runs, sweep

pytestmark = pytest.mark.slow  # starts sbatch, submitit jobs and kernels

SLURM_CONF = """ClusterName=vitscale-test
SlurmctldHost=localhost
GresTypes=gpu
MessageTimeout=1
TCPTimeout=1
NodeName=node[1-4] CPUs=64 Gres=gpu:8 State=UNKNOWN
PartitionName=gpu Nodes=node[1-4] Default=YES
"""


def sbatch_script(resources: config.SlurmResources, folder) -> str:
    """The sbatch script submitit writes for one run of these resources (checked by `sbatch --test-only`);
    submitit's SLURM executor looks for srun first."""
    system_tool("srun", package="slurm-client")
    ex = cluster.executor(folder, "slurm", resources)
    return ex._executor._make_submission_file_text("python -m submitit.core._submit FOLDER", "UID")


def sbatch() -> str:
    return system_tool("sbatch", package="slurm-client")


def test_job_scripts_are_what_sbatch_accepts(tmp_path):
    """`sbatch --test-only` parses every #SBATCH line and rejects what SLURM does not accept before
    it contacts a controller; with none here, a script it accepts ends at the controller."""
    (tmp_path / "slurm.conf").write_text(SLURM_CONF)
    resources = config.SlurmResources(
        partition="gpu",
        time_min=90,
        nodes=2,
        gpus_per_node=8,
        cpus_per_task=32,
        mem_gb=200,
        account="vision",
        setup=["echo ready"],
    )
    script = sbatch_script(resources, tmp_path / "jobs")
    for line in (
        "--partition=gpu",
        "--time=90",
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
        "--mem=200GB",
        "--account=vision",
        "--signal=USR1@120",  # the run saves at the next step and the job requeues itself (issue 26)
        "--requeue",
    ):
        assert f"#SBATCH {line}\n" in script, (line, script)
    assert "echo ready" in script and "srun" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "slurm.conf")}
    r = subprocess.run([sbatch(), "--test-only", str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert "Unable to contact slurm controller" in r.stderr + r.stdout, r.stderr
    # The check can fail: an option SLURM does not know is refused at parsing.
    path.write_text(script.replace("#SBATCH --nodes=2", "#SBATCH --nodez=2"))
    r = subprocess.run([sbatch(), "--test-only", str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert "unrecognized option" in r.stderr and "controller" not in r.stderr


def test_a_sweep_file_asks_for_its_resources(root, tmp_path):
    spec = sweep.load(root / "parameters/sweeps/gpu_scaling.yaml")
    assert spec.slurm.gpus_per_node >= 1 and spec.slurm.time_min > 0 and spec.slurm.partition
    assert len(spec.runs) == 8
    bad = yaml.safe_load((root / "tests/data/tiny_sweep.yaml").read_text()) | {"slurm": {"gpus_per_node": -1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(config.ConfigError, match="slurm.gpus_per_node"):
        sweep.load(tmp_path / "s.yaml")


@pytest.mark.long  # a killed local sweep, then submitit jobs in fresh processes (~3.5 min): make test-long
def test_submitit_jobs_match_the_local_runner_and_a_killed_job_resumes(root, tmp_path, killed_local_sweep):
    local_out, ids, _, local = killed_local_sweep
    assert local.returncode == 0, local.stdout[-2000:]
    out = tmp_path / "sweep"
    cmd = [
        str(Path(sys.executable).parent / "vitscale"),
        "sweep",
        str(root / "tests/data/tiny_sweep.yaml"),
        "--launcher",
        "submitit-local",
        "--out",
        str(out),
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 400:  # both jobs run at once: kill when one has a checkpoint and is not done
        started = [i for i in ids if runs.status_of(out / i) == "running" and any((out / i / "ckpt").glob("[0-9]*"))]
        if started:
            break
        assert p.poll() is None, p.stdout.read()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("no job reached a checkpoint")
    killed = started[0]
    os.killpg(p.pid, signal.SIGKILL)  # the CLI, the job controllers and the jobs
    p.wait(timeout=30)
    time.sleep(3)
    assert runs.status_of(out / killed) == "interrupted"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{killed}: submitted job" in r.stdout  # the killed run's job was resubmitted
    # Same ids and statuses, same summaries as the local runner.
    assert runs.read_json(out / "index.json")["runs"] == runs.read_json(local_out / "index.json")["runs"]
    for i in ids:
        mine, ref = runs.read_json(out / i / "summary.json"), runs.read_json(local_out / i / "summary.json")
        for key in ("variant", "total_steps", "images_seen", "num_params", "train_flops"):
            assert mine[key] == ref[key], key
        assert mine["final"].keys() == ref["final"].keys()
        for k, v in ref["final"].items():
            assert mine["final"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (i, k)
        steps = [m["step"] for m in runs.read_metrics(out / i / "metrics.jsonl") if "train/loss" in m]
        assert steps == sorted(set(steps)) and steps[-1] == 12
    report = (out / killed / "run.ipynb").read_text()
    assert "resuming" in report and "from step" in report  # it continued from its checkpoint
    status = subprocess.run([cmd[0], "status", str(out)], capture_output=True, text=True, timeout=300)
    assert status.stdout.strip().splitlines()[-1] == "2 done" and "job " in status.stdout
