"""Backend-specific speed work, in one place: what makes a ViT training step fast on XLA:CPU.

loop.make_trainer switches it on: on a CPU `kernels_for` gives the model the kernels below and
`default_chains` splits each device's batch into independent gradient chains; elsewhere the model
keeps the plain products, with the attention implementation vit.attention_implementation picks
(cuDNN on GPUs where it can), and one chain. VITSCALE_KERNELS=plain turns the CPU kernels off.
GPU compiler flags are set here too (configure_gpu), and only for GPUs.
tests/test_backend.py checks both paths give the same outputs and gradients; the speed-ups are
measured in benchmarks/README.md (benchmarks/train_throughput.py).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax._src import xla_bridge

from vitscale.models import vit


# ----------------------------------------------------------------------------- MLP products
@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., in] @ kernel [in, out], with a weight gradient that XLA:CPU gives to YNNPACK.

    XLA:CPU uses YNNPACK only for dots whose left operand contracts its minor axis; autodiff's
    weight gradient contracts x's token (major) axis and so ran on Eigen at about half the rate.
    The backward transposes the narrower operand into a buffer of its own (an optimization barrier
    keeps XLA from folding the transpose back into the dot)."""
    return x @ kernel


def _matmul_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _matmul_bwd(res, g):
    x, kernel = res
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    if x2.shape[1] <= g2.shape[1]:  # dK = (x^T) g, x^T its own buffer
        dk = jax.lax.optimization_barrier(x2.T) @ g2
    else:  # dK = ((g^T) x)^T: transpose the narrower g, and the small [out, in] product after it
        dk = jax.lax.optimization_barrier(jax.lax.optimization_barrier(g2.T) @ x2).T
    return g @ kernel.T, dk.astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's product through `matmul` (it asks for x [..., in] . kernel [in, out] only)."""
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    return matmul(lhs, rhs)


# ----------------------------------------------------------------------------- attention
def _weights(q: jax.Array, k: jax.Array) -> jax.Array:
    """softmax(q k^T) over [B, H, N, Dh]; logits and softmax in float32, as jax.nn's XLA path."""
    logits = jnp.einsum("bhqk,bhsk->bhqs", q, k, preferred_element_type=jnp.float32)
    return jax.nn.softmax(logits, axis=-1).astype(q.dtype)


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T) v over [B, H, N, Dh] (q already scaled)."""
    return jnp.einsum("bhqs,bhsk->bhqk", _weights(q, k), v)


def _own_transpose(a: jax.Array) -> jax.Array:
    """a with its last two axes swapped, in a buffer of its own (the barrier keeps XLA from folding it back)."""
    return jax.lax.optimization_barrier(jnp.swapaxes(a, -1, -2))


@jax.custom_vjp
def attention_core_ynn(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """attention_core with a backward whose every product XLA:CPU gives to YNNPACK.

    Autodiff writes dv = w^T g and dk = dlogits^T q contracting the major axis of w and dlogits,
    which XLA:CPU runs on Eigen; here w^T and dlogits^T are transposed into buffers of their own."""
    return attention_core(q, k, v)


def _attention_fwd(q, k, v):
    weights = _weights(q, k)
    return jnp.einsum("bhqs,bhsk->bhqk", weights, v), (q, k, v, weights)


def _attention_bwd(res, g):
    q, k, v, w = res
    dw = jnp.einsum("bhqk,bhsk->bhqs", g, v, preferred_element_type=jnp.float32)
    dv = jnp.einsum("bhsq,bhqk->bhsk", _own_transpose(w), g)
    w32 = w.astype(jnp.float32)
    dlogits = (w32 * (dw - jnp.sum(dw * w32, axis=-1, keepdims=True))).astype(q.dtype)  # softmax's vjp
    dq = jnp.einsum("bhqs,bhsk->bhqk", dlogits, k)
    dk = jnp.einsum("bhsq,bhqk->bhsk", _own_transpose(dlogits), q)
    return dq, dk, dv


attention_core_ynn.defvjp(_attention_fwd, _attention_bwd)


def self_attention(
    x, qkv_kernel, qkv_bias, out_kernel, out_bias, num_heads: int, core: Callable = attention_core
) -> jax.Array:
    """vit.self_attention computed in [B, H, N, D/H] straight out of one QKV einsum and back, so no
    transposes sit between the matrix products; `core` is softmax(q k^T) v."""
    b, n, d = x.shape
    h, dh = num_heads, d // num_heads
    qkv = jnp.einsum("bnd,dthk->tbhnk", x, qkv_kernel.reshape(d, 3, h, dh)) + qkv_bias.reshape(3, 1, h, 1, dh)
    q, k, v = qkv[0] * jnp.asarray(dh**-0.5, x.dtype), qkv[1], qkv[2]
    out = core(q, k, v)
    return jnp.einsum("bhqk,hkd->bqd", out, out_kernel.reshape(h, dh, d)) + out_bias


def self_attention_small_heads(x, qkv_kernel, qkv_bias, out_kernel, out_bias, num_heads: int) -> jax.Array:
    """self_attention with attention_core_ynn's backward (the faster one for small heads, see kernels_for)."""
    return self_attention(x, qkv_kernel, qkv_bias, out_kernel, out_bias, num_heads, core=attention_core_ynn)


CPU = vit.Kernels(dot_general=dot_general, self_attention=self_attention)
CPU_SMALL_HEADS = vit.Kernels(dot_general=dot_general, self_attention=self_attention_small_heads)
# Heads up to this size get CPU_SMALL_HEADS: its backward was 1.03-1.09x per step at head dim 16
# (benchmark shape A) and 0.97-0.98x at 64 (shapes B, C), where the transposes cost what Eigen lost.
SMALL_HEAD_DIM = 32


# ----------------------------------------------------------------------------- gradient chains
# Each chain keeps at least this many images: below it the chains' extra per-op overhead wins.
MIN_CHAIN_BATCH = 16


def default_chains(per_device_batch: int, platform: str, side_by_side: int = 1) -> int:
    """Gradient chains per device: on a CPU 4 (else 2) when the batch splits into chains of at least
    MIN_CHAIN_BATCH images, else 1; always 1 on GPU/TPU, where one pass fills the device. With
    `side_by_side` copies' gradients in one program (copies_side_by_side), that many times fewer each, at least 1.

    XLA:CPU runs much of a step (layer norms, softmax, small products, reductions) on one core at a
    time; independent chains give its thread pool work to run side by side, with no all-reduce. A
    group's copies are such chains already; more per copy only add small ops."""
    if platform != "cpu":
        return 1
    for n in (4, 2):
        if per_device_batch % n == 0 and per_device_batch // n >= MIN_CHAIN_BATCH:
            return max(1, n // side_by_side)
    return 1


def chained(value_and_grad: Callable, chains: int) -> Callable:
    """value_and_grad(params, images, labels, rng) averaged over `chains` equal parts of the batch:
    the same value and gradient, as independent chains of operations."""
    if chains == 1:
        return value_and_grad

    def fn(params, images, labels, rng):
        # [B, ...] -> [chains, B / chains, ...] with every device's rows split among the chains,
        # so each chain stays sharded over the data axis like the batch.
        split = lambda x: jnp.moveaxis(x.reshape(-1, chains, *x.shape[1:]), 1, 0)
        images, labels = split(images), split(labels)
        outs = [value_and_grad(params, images[i], labels[i], jax.random.fold_in(rng, i)) for i in range(chains)]
        value = sum(v for v, _ in outs) / chains
        return value, jax.tree.map(lambda *g: sum(g) / chains, *(g for _, g in outs))

    return fn


def copies_side_by_side(platform: str) -> bool:
    """Whether a group of runs (vitscale.stacked) computes each copy's gradient as its own chain of
    operations (CPU) rather than one vmap over the copies (GPU/TPU, where larger products fill the device).

    On XLA:CPU the copies' chains are independent work for the thread pool, as gradient chains are, and each
    copy computes the very graph of its run alone; vmap's batched products ran slower than the same products
    side by side (benchmarks/README.md, "Runs trained as one program"). VITSCALE_GROUP=vmap vmaps on a CPU
    too, to compare ("side-by-side", the default, is the CPU's way)."""
    choice = os.environ.get("VITSCALE_GROUP", "side-by-side")
    if choice not in ("side-by-side", "vmap"):
        raise ValueError(f"VITSCALE_GROUP must be one of ['side-by-side', 'vmap'], got {choice!r}")
    return platform == "cpu" and choice == "side-by-side"


# ----------------------------------------------------------------------------- the switch
def kernels_for(platform: str, dtype=jnp.float32, head_dim: int = 64) -> vit.Kernels:
    """This platform's kernels: the CPU ones above (unless VITSCALE_KERNELS=plain; by head_dim), elsewhere the
    plain products with the attention implementation vit.attention_implementation picks
    (VITSCALE_ATTENTION=xla: XLA's, to compare or to work around a cuDNN failure)."""
    if platform == "cpu" and os.environ.get("VITSCALE_KERNELS", "cpu") != "plain":
        return CPU_SMALL_HEADS if head_dim <= SMALL_HEAD_DIM else CPU
    if os.environ.get("VITSCALE_ATTENTION") == "xla":  # XLA's attention even where cuDNN's would run
        return vit.PLAIN
    return vit.plain_kernels(vit.attention_implementation(platform, dtype, head_dim))


def attention_of(kernels: vit.Kernels) -> str:
    """What a run records as its attention kernel: "cudnn", "xla", or "xla-cpu" (self_attention above)."""
    if kernels.self_attention in (self_attention, self_attention_small_heads):
        return "xla-cpu"
    return "cudnn" if kernels is vit.CUDNN else "xla"


# ----------------------------------------------------------------------------- GPU compiler flags
# The one place GPU compiler flags are set (configure_gpu, called by sharding.initialize before any
# backend starts). XLA reads XLA_FLAGS once, when a backend starts, so they go in then, and only when
# a GPU backend is what JAX will start; flags the user already set win.
#   --xla_gpu_enable_latency_hiding_scheduler=true  schedules collectives (the data-parallel gradient
#       all-reduce, FSDP's all-gathers) to overlap with compute on multi-GPU meshes; XLA's GPU default
#       is false. On one GPU there are no collectives to move and it changes nothing.
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)
_GPU_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")


def gpu_selected() -> bool:
    """Whether JAX will start a GPU backend: JAX_PLATFORMS names one, or (unset) a CUDA plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""
    if platforms:
        return any(p.strip() in ("cuda", "gpu") for p in platforms.split(","))
    for name in _GPU_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def _backends_started() -> bool:
    """Whether a JAX backend runs in this process (JAX has no public call for it)."""
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return started() if started else bool(getattr(xla_bridge, "_backends", None))


def configure_gpu(flags: tuple[str, ...] = GPU_XLA_FLAGS) -> list[str]:
    """Add `flags` to XLA_FLAGS when a GPU backend is selected and no backend has started yet;
    returns the flags added (none on a CPU, or once a backend runs, when it is too late)."""
    if _backends_started() or not gpu_selected():
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [f for f in flags if f.split("=")[0] not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
