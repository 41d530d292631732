"""Shared fixtures. Tests see 8 CPU devices so that sharding is real (set before JAX starts); the
runs they start in other processes do not (below)."""

import os
import tempfile

_USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["VITSCALE_BATCH"] = "1"
# Runs started by tests (papermill kernels, workers) share a compilation cache outside the repository.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="vitscale_test_jaxcache_"))

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
