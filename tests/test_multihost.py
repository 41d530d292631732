"""Two processes on loopback form one JAX job (4 CPU devices each) and train exactly as one process
with 8 devices does.

The children run tests/multihost_worker.py: `sharding.initialize` (jax.distributed over a free
127.0.0.1 port; CPU collectives over TCP by gloo, JAX's default on CPU), a mesh over all 8 devices
of both processes, each process feeding its own half of every global batch. Their losses and
gathered parameters must equal the reference this test process computes on its own 8 devices
with the same code; and the slices each reads from a streamed folder dataset must make up the
reference's global batch. Children are killed if anything fails or the time limit passes.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from vitscale import sharding
from vitscale.data import datasets

sys.path.insert(0, str(Path(__file__).parent))
import multihost_worker as worker  # noqa: E402
from natural_images import write_folder  # noqa: E402

pytestmark = pytest.mark.slow  # starts worker processes

TIMEOUT_S = 300  # both children share two busy CPU cores with this process; normally ~30 s


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Children:
    """The worker processes, started at once and killed on any failure or time-out."""

    def __init__(self, tmp_path: Path, mesh: tuple[int, int], nproc: int = 2, stream: str | None = None):
        self.tmp_path, self.nproc = tmp_path, nproc
        address = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.procs, self.logs = [], []
        self.deadline = time.monotonic() + TIMEOUT_S
        try:
            for i in range(nproc):
                self.logs.append(open(tmp_path / f"worker{i}.log", "w+"))
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(Path(worker.__file__)),
                            address,
                            str(i),
                            str(nproc),
                            str(mesh[0]),
                            str(mesh[1]),
                            str(tmp_path / f"out{i}.npz"),
                            *([stream] if stream else []),
                        ],
                        env=env,
                        stdout=self.logs[-1],
                        stderr=subprocess.STDOUT,
                    )
                )
        except BaseException:
            self.close()
            raise

    def results(self) -> list[dict]:
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"workers did not finish in {TIMEOUT_S} s:\n" + _tails(self.logs)) from None
        codes = [p.returncode for p in self.procs]
        if any(codes):
            raise AssertionError(f"worker exit codes {codes}:\n" + _tails(self.logs))
        return [dict(np.load(self.tmp_path / f"out{i}.npz")) for i in range(self.nproc)]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for log in self.logs:
            log.close()


def _tails(logs) -> str:
    out = []
    for i, log in enumerate(logs):
        log.flush()
        log.seek(0)
        out.append(f"--- worker {i} ---\n" + "".join(log.readlines()[-25:]))
    return "\n".join(out)


def test_host_slices_make_up_the_global_batch():
    """What each host feeds is its slice of the one global batch (a pure function of the step)."""
    whole = next(worker.batches(0, 1))
    halves = [next(worker.batches(i, 2)) for i in range(2)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])


@pytest.mark.slow  # two extra Python processes importing JAX and TF: ~40 s of CPU
@pytest.mark.parametrize("mesh", [(1, 8)])
def test_two_processes_train_like_one(tmp_path, mesh):
    assert jax.device_count() == 8 and jax.process_count() == 1
    # A streamed natural-image dataset, prepared here once: each child also reads its slices of it.
    root = write_folder(tmp_path / "images", per_class=5, classes=4)
    stream = f"folder:{root}@{tmp_path / 'tfds'}"
    datasets.get_builder(*stream.rsplit("@", 1))
    children = Children(tmp_path, mesh, stream=stream)  # they start (and compile) while we compute the reference
    try:
        losses, params, nu = worker.run(sharding.make_mesh(mesh), 0, 1)
        results = children.results()
    finally:
        children.close()
    assert losses[1] < losses[0]
    for i, r in enumerate(results):
        assert int(r["process_count"]) == 2 and int(r["device_count"]) == 8 and int(r["local_device_count"]) == 4
        # The mesh spans both processes, each holding a contiguous half of the devices (and so of
        # the batch); with fsdp=8 every split kernel has half its shards on each host.
        assert r["mesh_processes"].reshape(-1).tolist() == [0] * 4 + [1] * 4
        np.testing.assert_allclose(r["losses"], losses, rtol=1e-6, err_msg=f"process {i}")
        gathered = jax.tree_util.tree_map_with_path(lambda k, _, r=r: r[jax.tree_util.keystr(k)], params)
        worker.assert_params_match(gathered, params, nu, worker.LR, worker.STEPS, where=f"process {i}: ")
    # Streaming: the two processes read disjoint halves whose union is this process's global batch.
    for s, whole in enumerate(worker.stream_batches(stream, 0, 1)):
        for k in ("image", "label"):
            halves = [r[f"stream/{s}/{k}"] for r in results]
            assert all(len(h) == worker.GLOBAL_BATCH // 2 for h in halves)
            np.testing.assert_array_equal(np.concatenate(halves), whole[k], err_msg=f"step {s} {k}")
