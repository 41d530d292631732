"""vitscale: a workbench for studying how Vision Transformers scale."""

import os as _os


def _split_cpu_into_devices() -> None:
    """Expose the host's cores to JAX as VITSCALE_CPU_DEVICES CPU devices (default 1), before JAX
    starts its CPU backend.

    On a CPU, XLA runs one device's program with little parallelism outside the matrix products,
    so one device leaves cores idle. The default answer to that is the gradient chains of
    `train.default_chains` (no communication between devices). Sharding the batch over several CPU
    devices is another: on 2 cores, VITSCALE_CPU_DEVICES=4 made a step 1.27x (shape A), 1.14x (B)
    and 1.11x (C) faster than one device, measured before jemalloc and the chains
    (benchmarks/README.md). It is not the default because XLA:CPU's in-process collectives can
    stall when the cores are oversubscribed: twice here, with another heavy job on the 2 cores, a
    gradient all-reduce waited past XLA's 40 s rendezvous timeout
    (--xla_cpu_collective_call_terminate_timeout_seconds) and the process
    aborted. Use it on a machine the run has to itself. Nothing changes if XLA_FLAGS already sets a
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
