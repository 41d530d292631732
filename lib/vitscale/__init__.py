"""vitscale: a workbench for studying how Vision Transformers scale."""

import os as _os

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it (dynamic)


def _split_cpu_into_devices() -> None:
    """Expose the host's cores to JAX as VITSCALE_CPU_DEVICES CPU devices (default 1), before JAX
    starts its CPU backend.

    On a CPU, XLA runs one device's program with little parallelism outside the matrix products.
    The default answer is `backend.default_chains` (no communication between devices); several CPU
    devices are another (benchmarks/README.md). Not the default: XLA:CPU's in-process collectives
    can stall past XLA's rendezvous timeout when the cores are oversubscribed, aborting the process.
    Use it on a machine the run has to itself. Nothing changes if XLA_FLAGS already sets a
    host device count, or on GPU/TPU (JAX's default devices are then the accelerators).
    """
    flags = _os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    n = _os.environ.get("VITSCALE_CPU_DEVICES")
    if n is None:
        return
    try:
        count = int(n)
    except ValueError:
        raise ValueError(f"VITSCALE_CPU_DEVICES must be a positive integer, got {n!r}") from None
    if count < 1:
        raise ValueError(f"VITSCALE_CPU_DEVICES must be a positive integer, got {n!r}")
    if count > 1:
        _os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


_split_cpu_into_devices()
