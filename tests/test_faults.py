"""Faults a shared cluster brings, each for real on a tiny run: a second writer of one run folder,
SIGTERM mid-run (then resume equal to an uninterrupted run), a full disk at checkpoint and at report
time (then resume after freeing space), a truncated newest checkpoint, and no network at all."""

import contextlib
import json
import os
import shutil
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

from conftest import system_tool
from natural_images import write_folder
from vitscale import cli as vitscale_cli
from vitscale import config, metrics, pretrained, runs, sharding, train

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(
    name="faults",
    dataset="fashion_mnist",
    train_examples=512,
    test_split="test[:128]",
    variant="Atto/7",
    batch_size=32,
    total_steps=60,
    warmup_steps=5,
    eval_every=30,
    log_every=5,
    checkpoint_every=30,
    keep_checkpoints=2,
    eval_batch_size=128,
)
RUNNER = (
    "import sys, yaml; from vitscale import config, train; "
    "train.run(config.validate(config.PretrainConfig, yaml.safe_load(open(sys.argv[1]))), sys.argv[2])"
)
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'lib'}:{os.environ.get('PYTHONPATH', '')}"}


def start(params: dict, out: Path, tmp: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """The program's run(cfg, out_dir) in a fresh process (what a notebook cell calls)."""
    f = tmp / f"{out.name}.yaml"
    f.write_text(yaml.safe_dump(params))
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", RUNNER, str(f), str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vitscale.cli", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def final_params(out: Path):
    mngr = ocp.CheckpointManager(out.absolute() / "ckpt")
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.leaves(restored["state"]["params"])


def metrics_without_time(out: Path):
    return [{k: v for k, v in r.items() if k not in metrics.TIMING} for r in runs.read_metrics(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run the faulted runs must end equal to."""
    tmp = tmp_path_factory.mktemp("ref")
    p = start(BASE, tmp / "ref", tmp)
    assert p.wait(timeout=600) == 0, p.stdout.read()[-3000:]
    return tmp / "ref"


# ----------------------------------------------------------------------------- one writer
LOCKER = (
    "import sys, time; from vitscale import runs; runs.lock(sys.argv[1]); print('locked', flush=True); time.sleep(60)"
)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunBusy, match=rf"pid {holder.pid} on .*kill {holder.pid}"):
            runs.lock(tmp_path)
        # A child started under the holder's lock (the papermill kernel of `vitscale run`) may write.
        token = json.loads((tmp_path / runs.LOCK_NAME).read_text())["token"]
        child = subprocess.run(
            [sys.executable, "-c", LOCKER.replace("time.sleep(60)", "pass"), str(tmp_path)],
            env={**ENV, runs.HOLDER_ENV: token},
            capture_output=True,
            text=True,
        )
        assert child.returncode == 0 and "locked" in child.stdout, child.stderr
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (SIGKILL: no chance to release): its lock is taken over, with a note.
    err = subprocess.run(
        [sys.executable, "-c", LOCKER.replace("time.sleep(60)", "pass"), str(tmp_path)],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert err.returncode == 0 and f"took over the lock of a writer that is gone (pid {holder.pid}" in err.stderr


@pytest.mark.long  # several fresh processes: make test-long
def test_two_concurrent_runs_of_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    first = start({**BASE, "total_steps": 2000, "checkpoint_every": 1000, "eval_every": 1000}, out, tmp_path)
    try:
        wait_for(lambda: runs.read_metrics(out / "metrics.jsonl"), first)
        second = start({**BASE, "total_steps": 2000, "checkpoint_every": 1000, "eval_every": 1000}, out, tmp_path)
        text = second.communicate(timeout=300)[0]
        assert second.returncode != 0 and f"another process writes this run (pid {first.pid}" in text, text[-2000:]
    finally:
        first.kill()
        first.wait()


# ----------------------------------------------------------------------------- preemption
@pytest.mark.long  # a signalled process and its restart: make test-long
def test_sigterm_saves_at_the_next_step_then_the_resumed_run_equals_an_uninterrupted_one(tmp_path, reference):
    out = tmp_path / "preempted"
    p = start(BASE, out, tmp_path)
    wait_for(lambda: runs.read_metrics(out / "metrics.jsonl"), p)
    p.send_signal(signal.SIGTERM)
    text = p.communicate(timeout=300)[0]
    assert p.returncode != 0 and "preempted at step" in text, text[-2000:]
    saved = sorted(int(q.name) for q in (out / "ckpt").iterdir() if q.name.isdigit())
    assert saved and saved[-1] % BASE["checkpoint_every"], saved  # saved at the signal, not periodically
    p = start(BASE, out, tmp_path)
    text = p.communicate(timeout=600)[0]
    assert p.returncode == 0 and f"from step {saved[-1]}" in text, text[-2000:]
    for x, y in zip(final_params(reference), final_params(out), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.long  # several fresh processes: make test-long
def test_sigterm_reaches_the_kernel_of_a_papermill_run(tmp_path):
    params = tmp_path / "pretrain" / "long.yaml"
    params.parent.mkdir()
    params.write_text(yaml.safe_dump({**BASE, "total_steps": 3000, "checkpoint_every": 1000, "eval_every": 1000}))
    out = tmp_path / "long"
    p = cli("run", str(params), "--out", str(out))
    wait_for(lambda: runs.read_metrics(out / "metrics.jsonl"), p)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=300)
    saved = sorted(int(q.name) for q in (out / "ckpt").iterdir() if q.name.isdigit()) if (out / "ckpt").exists() else []
    assert p.returncode == 75 and "preempted at step" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert saved and saved[-1] < 1000


# ----------------------------------------------------------------------------- a full disk
@contextlib.contextmanager
def small_disk(path: Path, size: str = "48m"):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:  # root without CAP_SYS_ADMIN (some containers)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` but `leave` bytes."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(free, 0))
            f.flush()
            os.fsync(f.fileno())
    return filler


@pytest.mark.long  # several fresh processes: make test-long
@pytest.mark.parametrize("when", ["checkpoint", "report"])
def test_a_full_disk_is_one_error_line_then_the_same_command_resumes(tmp_path, when):
    params = tmp_path / "pretrain" / "disk.yaml"
    params.parent.mkdir()
    params.write_text(yaml.safe_dump(BASE))
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "run"
        p = cli("run", str(params), "--out", str(out))
        if when == "checkpoint":  # after the first checkpoint: room for metrics, none for the next checkpoint
            wait_for(lambda: (out / "ckpt" / "30").is_dir(), p)
            filler = fill(disk, leave=48 * 1024)
        else:  # the training is done; the notebook and its report cannot be written
            wait_for(lambda: (out / "summary.json").exists(), p)
            filler = fill(disk)
        stdout, stderr = p.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert p.returncode == 1 and "Traceback" not in stderr, stderr
        assert lines[-1].startswith("error: ") and "No space left on device" in lines[-1], lines[-3:]
        assert str(out) in lines[-1]  # the checkpoint, or the notebook papermill saves as the run goes
        filler.unlink()
        p = cli("run", str(params), "--out", str(out))
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0 and "took over" not in stderr, stderr[-3000:]
        assert (out / "run.html").exists() and json.loads((out / "summary.json").read_text())["total_steps"] == 60


# ----------------------------------------------------------------------------- a truncated checkpoint
def saved_steps(out: Path) -> list[int]:
    return sorted(int(q.name) for q in (out / "ckpt").iterdir() if q.name.isdigit())


def truncate(step_dir: Path) -> None:
    """Cut every file of a checkpoint's state to half its size (as a disk filled mid-copy would)."""
    for f in (step_dir / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(tmp_path, reference):
    """An unfinished run (preempted after its checkpoint at 30) whose newest checkpoint is damaged:
    the same command resumes from 30 and ends equal to an uninterrupted run. (A finished run's
    checkpoints are read by export and transfer: the test below.)"""
    out = tmp_path / "trunc"
    p = start(BASE, out, tmp_path)  # checkpoints at 30 and 60
    wait_for(lambda: (out / "ckpt" / "30").is_dir(), p)
    p.send_signal(signal.SIGTERM)
    text = p.communicate(timeout=300)[0]
    assert p.returncode != 0 and "preempted at step" in text, text[-2000:]  # the run is not finished
    saved = saved_steps(out)
    assert saved[0] == 30 and 30 < saved[-1] < 60, saved
    truncate(out / "ckpt" / str(saved[-1]))
    p = start(BASE, out, tmp_path)
    text = p.communicate(timeout=600)[0]
    assert p.returncode == 0 and "from step 30" in text, text[-2000:]
    for x, y in zip(final_params(reference), final_params(out), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def params_at(out: Path, step: int) -> list[np.ndarray]:
    mngr = ocp.CheckpointManager(out.absolute() / "ckpt")
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return [np.asarray(x) for x in jax.tree.leaves(restored["state"]["params"])]


@pytest.mark.slow
def test_export_of_a_finished_run_whose_newest_checkpoint_is_truncated_uses_the_one_before(tmp_path, reference, capsys):
    run = tmp_path / "finished"
    shutil.copytree(reference, run)
    assert (run / "summary.json").is_file() and saved_steps(run) == [30, 60]
    truncate(run / "ckpt" / "60")
    assert vitscale_cli.main(["export", str(run)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    notes = [line for line in err if line.startswith("note: ")]
    assert len(notes) == 1 and "step 60 is unreadable" in notes[0] and "using step 30" in notes[0], err
    npz = run / "export" / "big_vision_step30.npz"
    assert yaml.safe_load(npz.with_suffix(".yaml").read_text())["exported_from"]["step"] == 30
    with np.load(npz) as f:  # the layout renames and reshapes; the values' total stays
        total = sum(float(np.abs(f[k].astype(np.float64)).sum()) for k in f.files)
    at = {s: sum(float(np.abs(x.astype(np.float64)).sum()) for x in params_at(reference, s)) for s in (30, 60)}
    assert total == pytest.approx(at[30], rel=1e-6) and total != pytest.approx(at[60], rel=1e-6), (total, at)
    # Transfer reads it through the same fallback (a full restore, as fine-tuning starts from it).
    loaded = pretrained.load_run(run, sharding.make_mesh([-1, 1]))
    assert loaded.step == 30 and "using step 30" in capsys.readouterr().err
    truncate(run / "ckpt" / "30")  # none readable: one line naming the damaged steps
    assert vitscale_cli.main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could be read (damaged: steps 60, 30)" in err[0], err


# ----------------------------------------------------------------------------- no network
def no_network() -> tuple[str, ...]:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode:
        pytest.skip("unshare -n (a network namespace) is not available here")
    return ("unshare", "-n")


def connections(trace: Path) -> list[str]:
    """The connect() calls in an strace log to anything but this host (DNS, metadata servers, GCS)."""
    return [
        line
        for line in trace.read_text().splitlines()
        if ("AF_INET" in line or "AF_INET6" in line) and "127.0.0.1" not in line and '"::1"' not in line
    ]


@pytest.mark.slow
def test_a_run_without_network_is_the_same_run_and_tries_none(tmp_path, reference):
    system_tool("strace", package="strace")
    out, trace = tmp_path / "offline", tmp_path / "trace"
    strace = ("strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", str(trace))
    p = start(BASE, out, tmp_path, prefix=(*no_network(), *strace))
    text = p.communicate(timeout=600)[0]
    assert p.returncode == 0, text[-2000:]
    assert metrics_without_time(out / "metrics.jsonl") == metrics_without_time(reference / "metrics.jsonl")
    assert not connections(trace), connections(trace)[:5]


@pytest.mark.slow
def test_a_bad_parameter_file_prints_only_error_lines_and_tries_no_network(tmp_path):
    bad = tmp_path / "pretrain" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump({**BASE, "train_examples": 10**8}))
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "trace"
    p = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), sys.executable, "-m", "vitscale.cli"]
        + ["run", str(bad), "--out", str(tmp_path / "out")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert [line.split(":")[0] for line in p.stderr.splitlines()] == ["error"], p.stderr
    assert not connections(trace), connections(trace)[:5]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- pp lists against the model
def problems_of(params: dict) -> dict[str, str]:
    try:
        train.check(config.validate(config.PretrainConfig, params))
    except config.ConfigError as e:
        return {p.field: p.message for p in e.problems}
    return {}


def test_a_pp_list_whose_size_is_not_the_models_is_refused_before_compute():
    assert problems_of({**BASE, "pp_eval": ["decode", "resize(28)", "value_range(-1, 1)"]}) == {}
    got = problems_of({**BASE, "pp_eval": ["decode", "resize(14)", "value_range(-1, 1)"]})
    assert set(got) == {"pp_eval"} and "14x14x1" in got["pp_eval"] and "28x28x1" in got["pp_eval"]
    got = problems_of({**BASE, "pp_train": ["decode", "resize(28)", "channels(3)", "value_range(-1, 1)"]})
    assert set(got) == {"pp_train"} and "28x28x3" in got["pp_train"]
    # resize_small keeps the aspect: 28x28 -> 32x32, then a central 28 crop is the model's size.
    assert problems_of({**BASE, "pp_eval": ["decode", "resize_small(32)", "central_crop(28)"]}) == {}


def test_a_folder_with_one_class_is_refused(tmp_path):
    root = write_folder(tmp_path / "images", per_class=4, classes=1, photo_class=False)
    params = {**BASE, "dataset": f"folder:{root}", "data_dir": str(tmp_path / "tfds"), "train_examples": None}
    got = problems_of({**params, "test_split": "train", "image_size": 28, "channels": 3})
    assert "dataset" in got and "1 class" in got["dataset"], got
