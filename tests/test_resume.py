"""Runs survive a crash: SIGKILL mid-run then restart equals an uninterrupted run; unreadable
checkpoints are skipped; a non-finite loss stops with the step named; Ctrl-C saves first."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from natural_images import write_folder
from vitscale import config, loop, metrics, runs, train
from vitscale.data import datasets

BASE = dict(
    name="resume",
    dataset="fashion_mnist",
    train_examples=2048,
    test_split="test[:256]",
    variant="Atto/7",
    batch_size=32,
    total_steps=120,
    warmup_steps=10,
    eval_every=40,
    log_every=5,
    checkpoint_every=20,
    keep_checkpoints=2,
    crop_padding=2,
    flip=True,
    dropout=0.1,
    eval_batch_size=256,
)
RUNNER = (
    "import sys, yaml; from vitscale import config, train; "
    "train.run(config.validate(config.PretrainConfig, yaml.safe_load(open(sys.argv[1]))), sys.argv[2])"
)


def start(params: dict, out: Path, tmp: Path) -> subprocess.Popen:
    f = tmp / f"{out.name}.yaml"
    f.write_text(yaml.safe_dump(params))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(f), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, at_least: int, timeout: float = 240) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = [int(p.name) for p in (out / "ckpt").glob("*") if p.name.isdigit()]
        if steps and max(steps) >= at_least:
            return max(steps)
        if proc.poll() is not None:
            raise AssertionError(f"run ended before checkpoint {at_least}: {proc.stdout.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("timed out waiting for a checkpoint")


def final_params(out: Path):
    mngr = ocp.CheckpointManager(out.absolute() / "ckpt")
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["params"]  # restored without a target: the saved tree as a dict


def comparable(records):
    return [{k: v for k, v in r.items() if k not in metrics.TIMING} for r in records]


def kill_and_resume(params: dict, tmp_path: Path, kill_after: int) -> tuple[Path, Path]:
    """An uninterrupted run, and the same run SIGKILLed after checkpoint `kill_after` and started again:
    both end with bit-identical parameters and the same logged metrics. Returns (ref, crashed)."""
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    p = start(params, ref, tmp_path)
    assert p.wait(timeout=600) == 0, p.stdout.read()[-3000:]
    p = start(params, crashed, tmp_path)
    wait_for_checkpoint(crashed, p, kill_after)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not (crashed / "summary.json").exists()
    p = start(params, crashed, tmp_path)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    assert "resuming" in out
    for x, y in zip(jax.tree.leaves(final_params(ref)), jax.tree.leaves(final_params(crashed))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert comparable(runs.read_metrics(ref / "metrics.jsonl")) == comparable(
        runs.read_metrics(crashed / "metrics.jsonl")
    )
    return ref, crashed


@pytest.mark.long  # a killed process and its restart: make test-long
def test_sigkill_then_restart_equals_uninterrupted_run(tmp_path):
    kill_and_resume(BASE, tmp_path, 40)


@pytest.mark.slow
def test_unreadable_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    cfg = config.validate(config.PretrainConfig, {**BASE, "total_steps": 40})
    out = tmp_path / "run"
    train.run(cfg, out)
    assert sorted(int(p.name) for p in (out / "ckpt").iterdir() if p.name.isdigit()) == [20, 40]
    for f in (out / "ckpt" / "40").rglob("*"):  # corrupt the newest checkpoint's array data
        if f.is_file() and "state" in str(f):
            f.write_bytes(b"garbage")
    cfg2 = config.validate(config.PretrainConfig, {**BASE, "total_steps": 40})
    with pytest.warns(UserWarning, match="checkpoint at step 40 .* unreadable"):
        summary = train.run(cfg2, out)
    assert summary["final"]["test/acc"] > 0
    assert any(p.name.startswith("40.unreadable") for p in (out / "ckpt").iterdir())
    assert (out / "ckpt" / "40").exists()  # re-trained from 20 and saved again


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    cfg = config.validate(
        config.PretrainConfig,
        {
            **BASE,
            "lr": 1e35,
            "warmup_steps": 0,
            "schedule": "constant",
            "checkpoint_every": 1,
            "log_every": 1,
            "grad_clip_norm": None,
        },
    )
    out = tmp_path / "nan"
    with pytest.raises(loop.NonFiniteLoss, match=r"at step (\d+)") as e:
        train.run(cfg, out)
    bad = int(__import__("re").search(r"at step (\d+)", str(e.value)).group(1))
    saved = [int(p.name) for p in (out / "ckpt").iterdir() if p.name.isdigit()]
    assert all(s < bad for s in saved)
    assert not (out / "summary.json").exists()


@pytest.mark.long  # an interrupted process and its restart: make test-long
def test_ctrl_c_saves_a_checkpoint_then_the_run_resumes(tmp_path):
    params = {**BASE, "total_steps": 400, "checkpoint_every": 1000, "eval_every": 1000}
    out = tmp_path / "int"
    p = start(params, out, tmp_path)
    t0 = time.time()
    while not runs.read_metrics(out / "metrics.jsonl") and time.time() - t0 < 240:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    text = p.communicate(timeout=120)[0]
    assert p.returncode != 0 and "checkpoint saved" in text, text[-2000:]
    saved = [int(q.name) for q in (out / "ckpt").iterdir() if q.name.isdigit()]
    assert len(saved) == 1 and 0 < saved[0] < 400
    p = start(params, out, tmp_path)
    text = p.communicate(timeout=600)[0]
    assert p.returncode == 0 and f"from step {saved[0]}" in text, text[-2000:]
    assert json.loads((out / "summary.json").read_text())["total_steps"] == 400


@pytest.mark.long  # the in-memory variant's twin, streaming: make test-long
def test_sigkill_then_restart_equals_uninterrupted_run_when_streaming(tmp_path):
    """The same through the streaming path: natural images of varying sizes, inception crops."""
    root = write_folder(tmp_path / "images", per_class=12)
    name, data_dir = f"folder:{root}", str(tmp_path / "tfds")
    datasets.get_builder(name, data_dir)  # prepared once, before the runs read it
    params = {
        **BASE,
        "dataset": name,
        "data_dir": data_dir,
        "input": "stream",
        "train_examples": None,
        "test_split": "test",
        "image_size": 28,
        "channels": 3,
        "pp_train": ["decode", "inception_crop(28)", "flip_lr", "value_range(-1, 1)"],
        "pp_eval": ["decode", "resize_small(32)", "central_crop(28)", "value_range(-1, 1)"],
        "total_steps": 30,
        "eval_every": 10,
        "checkpoint_every": 5,
    }
    _, crashed = kill_and_resume(params, tmp_path, 10)
    assert json.loads((crashed / "summary.json").read_text())["input"]["train"] == "stream"
