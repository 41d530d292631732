"""Model FLOPs utilisation (MFU): how much of a device's matmul peak a training step uses.

MFU = images/s x 3 x forward FLOPs per image (vitscale.models.flops.forward_flops) / (devices x peak
per device). The peak comes, in this order, from the `peak_flops` parameter, from the table below by
device kind and matmul precision (datasheet numbers, dense, no sparsity), or on a CPU from a jitted
float32 matmul measured once per host and cached under ~/.cache/vitscale. Every run logs `perf/mfu`
and `perf/images_per_s_per_device` (vitscale.loop) and keeps the peak's source.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import socket
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vitscale import files
from vitscale.models import flops


def _gpu(bf16: float, tf32: float, datasheet: str) -> dict[str, tuple[float, str]]:
    return {"bfloat16": (bf16, f"{datasheet}, dense BF16"), "float32": (tf32, f"{datasheet}, dense TF32")}


def _tpu(bf16: float, docs: str) -> dict[str, tuple[float, str]]:
    # float32 matmuls at JAX's DEFAULT precision run as one bf16 pass of the MXU: the bf16 peak.
    return {"bfloat16": (bf16, f"{docs}, bf16"), "float32": (bf16, f"{docs}, bf16 (f32 at DEFAULT precision)")}


# (device-kind substring, lower-case; the first match wins) -> {precision: (FLOP/s per device, source)}.
# "bfloat16" is dense bf16 (fp16 the same); "float32" what a float32 matmul runs at with JAX's
# default precision: TF32 tensor cores on NVIDIA GPUs since Ampere; on TPUs the bf16 peak (_tpu).
PEAKS: list[tuple[str, dict[str, tuple[float, str]]]] = [
    # NVIDIA H200 Tensor Core GPU datasheet: the H100 SXM's compute, BF16 1,979 TFLOPS with
    # sparsity (989 dense), TF32 989 with sparsity (494.5 dense).
    ("h200", _gpu(989e12, 494.5e12, "NVIDIA H200 datasheet")),
    # NVIDIA H100 Tensor Core GPU datasheet: PCIe BF16 756 dense, TF32 378 dense; SXM5 989 and 494.5.
    ("h100 pcie", _gpu(756e12, 378e12, "NVIDIA H100 datasheet (PCIe)")),
    ("h100", _gpu(989e12, 494.5e12, "NVIDIA H100 datasheet (SXM)")),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 312 dense, TF32 156 dense.
    ("a100", _gpu(312e12, 156e12, "NVIDIA A100 datasheet")),
    # Google Cloud TPU documentation, system architecture pages, bf16 peak per chip. v5e's device
    # kind is "TPU v5 lite", v5p's "TPU v5"; a v4 or v5p chip is one JAX device (megacore).
    ("tpu v5 lite", _tpu(197e12, "Cloud TPU v5e docs: 197 TFLOP/s per chip")),
    ("tpu v5e", _tpu(197e12, "Cloud TPU v5e docs: 197 TFLOP/s per chip")),
    ("tpu v5", _tpu(459e12, "Cloud TPU v5p docs: 459 TFLOP/s per chip")),
    ("tpu v4", _tpu(275e12, "Cloud TPU v4 docs: 275 TFLOP/s per chip")),
    # A v3 chip (123 TFLOP/s) has two TensorCores, each a JAX device: 61.5 per device.
    ("tpu v3", _tpu(61.5e12, "Cloud TPU v3 docs: 123 TFLOP/s per chip, 2 devices")),
]

MATMUL_N = 1024  # the CPU measurement: f32 [n, n] @ [n, n], 2.1 GFLOP a product (~5 ms at 400 GFLOP/s)


@dataclasses.dataclass(frozen=True)
class Peak:
    """A device's matmul peak in FLOP/s and where the number comes from."""

    flops_per_s: float  # per device
    source: str
    device_kind: str
    precision: str  # "bfloat16" or "float32"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def precision_of(dtype) -> str:
    """The peak table's precision for a model's compute dtype: bf16 and fp16 -> "bfloat16"."""
    return "bfloat16" if jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) else "float32"


def table_peak(device_kind: str, precision: str) -> tuple[float, str] | None:
    """(FLOP/s, source) from the table for a device kind such as "NVIDIA H100 80GB HBM3"; None if unknown."""
    kind = device_kind.lower()
    for key, by_precision in PEAKS:
        if key in kind:
            return by_precision[precision]
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("VITSCALE_CACHE_DIR") or Path.home() / ".cache" / "vitscale")


def _host_key() -> str:
    """This machine as the cache knows it: host name, CPU model, cores, JAX version."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{socket.gethostname()}|{model}|{os.cpu_count()} cpus|jax {jax.__version__}"


def measure_cpu_matmul(n: int = MATMUL_N, repeats: int = 10) -> float:
    """FLOP/s of a jitted float32 [n, n] matmul on the CPU (all its cores): the best of `repeats`."""
    cpu = jax.local_devices(backend="cpu")[0]
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32), cpu)
    b = jax.device_put(np.random.default_rng(1).standard_normal((n, n), np.float32) / math.sqrt(n), cpu)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()  # compile, warm up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _busy() -> float:
    """The 1-minute load average per core (0 where unknown): above BUSY, a measurement is low."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


BUSY = 0.5  # load per core above which a measurement is taken again by the next run


def cpu_matmul_peak() -> tuple[float, str]:
    """This host's float32 matmul FLOP/s (the whole CPU), measured once and cached. A measurement
    taken on a busy machine (load per core > BUSY) is retaken by later runs, and the cache keeps
    the best, until one is taken on a quiet machine."""
    path = cache_dir() / "matmul_peak.json"
    key = _host_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached.get(key), dict) else None
    valid = entry is not None and isinstance(entry.get("flops_per_s"), int | float)
    if not valid or entry.get("load_per_core", 0.0) > BUSY:
        load, rate = _busy(), measure_cpu_matmul()
        if not valid or rate > entry["flops_per_s"]:
            entry = {"flops_per_s": rate, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_per_core": load}
        else:
            entry = {**entry, "load_per_core": min(load, entry.get("load_per_core", load))}
        cached[key] = entry
        files.atomic_write_text(path, json.dumps(cached, indent=1))
    busy = f", load {entry['load_per_core']:.1f}/core" if entry.get("load_per_core", 0.0) > BUSY else ""
    return float(entry["flops_per_s"]), f"measured f32 {MATMUL_N}^3 matmul, {entry['measured_at']}{busy} ({path})"


def device_peak(device, precision: str, override: float | None = None) -> Peak:
    """The per-device peak of `device` at `precision` ("bfloat16" or "float32"): the override
    (the `peak_flops` parameter) if given, else the table, else on a CPU the measured matmul rate
    shared among the host's CPU devices. Unknown accelerators get NaN (MFU then reads NaN)."""
    kind = getattr(device, "device_kind", str(device.platform))
    if override is not None:
        return Peak(float(override), "parameter peak_flops", kind, precision)
    if device.platform == "cpu":
        rate, source = cpu_matmul_peak()
        share = len(jax.local_devices(backend="cpu"))
        if share > 1:
            source += f", shared by {share} CPU devices"
        return Peak(rate / share, source, kind, precision)
    found = table_peak(kind, precision)
    if found is None:
        return Peak(math.nan, f"unknown device kind {kind!r}: set peak_flops", kind, precision)
    return Peak(found[0], found[1], kind, precision)


def mfu(images_per_s: float, forward_flops: float, devices: int, peak_flops_per_s: float) -> float:
    """Training FLOPs per second (flops.training of images/s) / (devices x peak per device)."""
    return flops.training(forward_flops, images_per_s) / (devices * peak_flops_per_s)
