"""`import vitscale` splits a CPU host into VITSCALE_CPU_DEVICES JAX devices (default: one)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts Python processes

CODE = "import vitscale, jax; print(jax.device_count(), jax.devices()[0].platform)"


def devices_with(**env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VITSCALE_CPU_DEVICES")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "env,want",
    [
        ({}, 1),
        ({"VITSCALE_CPU_DEVICES": "3"}, 3),
        ({"VITSCALE_CPU_DEVICES": "1"}, 1),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=5", "VITSCALE_CPU_DEVICES": "2"}, 5),
    ],
)
def test_cpu_device_count(env, want):
    r = devices_with(**env)
    assert r.returncode == 0, r.stderr[-2000:]
    count, platform = r.stdout.split()
    assert platform == "cpu" and int(count) == want


def test_bad_device_count_names_the_variable():
    r = devices_with(VITSCALE_CPU_DEVICES="two")
    assert r.returncode != 0 and "VITSCALE_CPU_DEVICES must be a positive integer, got 'two'" in r.stderr
