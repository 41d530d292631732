"""Shared fixtures. Tests see 8 CPU devices so that sharding is real (set before JAX starts); the
runs they start in other processes do not (below)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# torch's CUDA wheel pulls in triton, whose bundled LLVM segfaults on import once XLA's is loaded;
# the timm comparisons run torch on the CPU and never need it (torch treats it as absent).
sys.modules.setdefault("triton", None)

_USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["VITSCALE_BATCH"] = "1"
# Runs started by tests (papermill kernels, workers) share a compilation cache outside the repository.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="vitscale_test_jaxcache_"))
# The CPU matmul peak (vitscale.perf) is measured once per test session, not cached in the home folder.
os.environ.setdefault("VITSCALE_CACHE_DIR", tempfile.mkdtemp(prefix="vitscale_test_cache_"))

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from vitscale import runs, sweep  # noqa: E402

# JAX reads XLA_FLAGS once, when its CPU backend starts: start it here with the 8 devices, then give
# the processes tests start (papermill kernels, `vitscale run`, benchmarks) the environment a user's
# run has (one CPU device). A child with eight CPU devices on the 2 cores died with SIGABRT in
# test_run_overhead_bench while another job shared the cores, most likely XLA:CPU's in-process
# all-reduce waiting past its 40 s rendezvous timeout, as seen before under oversubscription
# (vitscale/__init__.py). Tests that want devices in a child set XLA_FLAGS themselves.
assert jax.device_count() >= 8 or _USER_XLA_FLAGS is not None, jax.devices()
if _USER_XLA_FLAGS is None:
    del os.environ["XLA_FLAGS"]
else:
    os.environ["XLA_FLAGS"] = _USER_XLA_FLAGS

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
ROOT_USER = os.geteuid() == 0  # CI runs `make test` as root: it installs every tool, and every test runs


def system_tool(*names: str, package: str) -> str:
    """The path of a system tool some tests need (the first of `names` on PATH). Missing: as root a
    failure (`make test` installs it, so CI runs every test); as another user a skip that names it."""
    for name in names:
        if exe := shutil.which(name):
            return exe
    why = f"{names[0]} is not installed (`sudo apt-get install {package}`; `make test` as root installs it)"
    if ROOT_USER:
        pytest.fail(why)
    pytest.skip(why)


# How a missing Fashion-MNIST shows: data.builders' message, or a test's own read of the package's files.
FASHION_MISSING = "fashion_mnist: missing"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _skip_without_fashion_mnist())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _skip_without_fashion_mnist())


def _skip_without_fashion_mnist():
    """As another user than root, a test (or fixture) that needs Fashion-MNIST's files where they are
    not installed is skipped, saying so; as root it fails as any error does."""
    try:
        return (yield)
    except Exception as e:
        if ROOT_USER or not (FASHION_MISSING in str(e) or str(FASHION) in str(e)):
            raise
        pytest.skip("Fashion-MNIST is not installed (`sudo apt-get install dataset-fashion-mnist`)")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def killed_local_sweep(root, tmp_path_factory):
    """tests/data/tiny_sweep.yaml through the local runner, killed during its second run, then run
    again to the end: (out, ids, the first run's file times before the rerun, the rerun's result).
    Also the reference the cluster launcher's runs are compared with (test_cluster.py)."""
    out = tmp_path_factory.mktemp("local_sweep") / "sweep"
    cmd = [
        str(Path(sys.executable).parent / "vitscale"),
        "sweep",
        str(root / "tests/data/tiny_sweep.yaml"),
        "--out",
        str(out),
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ids = [r.run_id for r in sweep.load(root / "tests/data/tiny_sweep.yaml").runs]
    t0 = time.time()
    while time.time() - t0 < 400:
        states = [runs.status_of(out / i) for i in ids]
        if states[0] == "done" and states[1] == "running":
            break
        assert p.poll() is None, p.stdout.read()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("the sweep never reached its second run")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    time.sleep(3)  # orphaned kernels notice their parent is gone and exit
    assert runs.status_of(out / ids[1]) == "interrupted"  # its process is gone: it will resume
    first = out / ids[0]
    stamp = {f: (first / f).stat().st_mtime_ns for f in ("summary.json", "run.ipynb", "metrics.jsonl")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return out, ids, stamp, r
