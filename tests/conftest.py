"""Shared fixtures. Tests see 8 CPU devices so that sharding is real (set before JAX starts)."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["VITSCALE_BATCH"] = "1"
# Runs started by tests (papermill kernels, workers) share a compilation cache outside the repository.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="vitscale_test_jaxcache_"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
