"""Device mesh, partition rules, batch placement and multi-host start-up.

The mesh has two named axes, ("data", "fsdp"). Batches split their leading axis over both;
parameters and optimizer state are fully sharded over "fsdp": each array's largest dimension
divisible by the fsdp size is split, and arrays with no such dimension are replicated. The same
code runs on 1 CPU, 8 fake CPU devices, a GPU or a multi-host TPU/GPU job: nothing here bakes in a
device count.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vitscale import backend

AXES = ("data", "fsdp")
BATCH_SPEC = P(AXES)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> None:
    """Join a multi-host JAX job when asked to (by parameters or by JAX's environment variables).

    Call it before anything touches a JAX backend. Further keyword arguments go to
    `jax.distributed.initialize` (e.g. `initialization_timeout` in seconds). On CPU, the processes'
    collectives run over TCP with gloo, JAX's default `jax_cpu_collectives_implementation`."""
    backend.configure_gpu()  # GPU compiler flags, before a backend starts (only when a GPU is selected)
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if not coordinator_address and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        if not jax.distributed.is_initialized():
            jax.distributed.initialize()  # a multi-node SLURM job: JAX reads coordinator and ranks from SLURM
        return
    if not coordinator_address or (num_processes or 1) <= 1:
        return
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
    )


def mesh_shape(mesh: Sequence[int], device_count: int) -> tuple[int, int]:
    """Resolve a [data, fsdp] request (one entry may be -1) against the device count."""
    data, fsdp = mesh
    if data == -1:
        data = device_count // fsdp if fsdp > 0 and device_count % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = device_count // data if data > 0 and device_count % data == 0 else 0
    if data * fsdp != device_count:
        raise ValueError(
            f"mesh {list(mesh)} does not fit {device_count} devices: data x fsdp must equal {device_count}"
        )
    return data, fsdp


def make_mesh(mesh: Sequence[int] = (-1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over all devices (of every host).

    Devices are ordered host by host (process index, then id), so that each host's devices hold
    a contiguous block of the batch, the block `put_batch` fills from that host's slice.
    `create_device_mesh` then keeps that order on CPU, sorts by id on GPU and follows the
    interconnect on TPU (where a multi-slice job would want `create_hybrid_device_mesh`).
    """
    devices = sorted(devices if devices is not None else jax.devices(), key=lambda d: (d.process_index, d.id))
    shape = mesh_shape(mesh, len(devices))
    try:
        arr = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):  # odd shapes on TPU: plain order
        arr = np.array(devices).reshape(shape)
    return Mesh(arr, AXES)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = 2**10) -> P:
    """Split the largest dimension divisible by `fsdp_size`; replicate small or indivisible arrays."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, P]] = (), min_size: int = 2**10) -> Any:
    """NamedShardings for a pytree (parameters or optimizer state): the first (regex over the
    '/'-joined path, spec) rule that matches wins, otherwise FSDP by shape."""
    fsdp_size = mesh.shape["fsdp"]
    compiled = [(re.compile(r), spec) for r, spec in rules]

    def one(path, leaf):
        shape = getattr(leaf, "shape", ())
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        for rx, spec in compiled:
            if rx.search(name):
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, fsdp_spec(shape, fsdp_size, min_size))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this host's slice of the global batch into global arrays split over the mesh."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def eval_batch_size(batch_size: int) -> int:
    """An evaluation batch size rounded up to a multiple of the device count (padded batches split
    evenly): the one rounding every evaluator uses."""
    return -(-batch_size // jax.device_count()) * jax.device_count()
