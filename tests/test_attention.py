"""Attention that picks its kernel: the one choice (vit.attention_implementation) for each platform,
dtype and head dimension, without running cuDNN; the XLA path's outputs and gradients against a
textbook float64 attention in numpy; the GPU compiler flags set only for GPUs, before a backend starts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitscale import backend
from vitscale.models import vit

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32


@pytest.mark.parametrize(
    "platform,dtype,head_dim,cc,want",
    [
        ("gpu", BF16, 64, None, "cudnn"),  # B/16, L/16: head dim 64
        ("cuda", F16, 128, None, "cudnn"),
        ("gpu", BF16, 88, None, "cudnn"),  # g/14
        ("gpu", BF16, 256, "9.0", "cudnn"),  # Hopper's limit
        ("gpu", BF16, 256, "8.0", "xla"),  # Ampere: at most 128
        ("gpu", BF16, 128, "8.0", "cudnn"),
        ("gpu", BF16, 264, None, "xla"),  # over 256
        ("gpu", BF16, 60, None, "xla"),  # not a multiple of 8
        ("gpu", F32, 64, None, "xla"),  # cuDNN's flash attention takes bf16/fp16 only
        ("cpu", BF16, 64, None, "xla"),
        ("tpu", BF16, 64, None, "xla"),
    ],
)
def test_the_kernel_choice(platform, dtype, head_dim, cc, want):
    assert vit.attention_implementation(platform, dtype, head_dim, cc) == want


def test_the_backend_gives_the_chosen_kernel_and_records_it():
    assert backend.kernels_for("gpu", BF16, 64) is vit.CUDNN
    assert backend.kernels_for("gpu", F32, 64) is vit.PLAIN
    assert backend.kernels_for("tpu", BF16, 64) is vit.PLAIN
    assert backend.kernels_for("cpu", BF16, 64) is backend.CPU
    assert [backend.attention_of(k) for k in (vit.CUDNN, vit.PLAIN, backend.CPU)] == ["cudnn", "xla", "xla-cpu"]
    assert vit.CUDNN.self_attention.keywords == {"implementation": "cudnn"}


def textbook(x, wqkv, bqkv, wo, bo, heads, g):
    """softmax(q k^T / sqrt(d)) v per head in float64, its output and the gradients of sum(out * g)."""
    b, n, d = x.shape
    dh = d // heads
    qkv = (x @ wqkv + bqkv).reshape(b, n, 3, heads, dh).transpose(2, 0, 3, 1, 4)  # [3, b, h, n, dh]
    q, k, v = qkv
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = p @ v  # [b, h, n, dh]
    oc = o.transpose(0, 2, 1, 3).reshape(b, n, d)
    out = oc @ wo + bo
    # backward, by hand
    dwo, dbo = np.einsum("bnd,bne->de", oc, g), g.sum((0, 1))
    do = (g @ wo.T).reshape(b, n, heads, dh).transpose(0, 2, 1, 3)
    dp, dv = do @ v.transpose(0, 1, 3, 2), p.transpose(0, 1, 3, 2) @ do
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq, dk = ds @ k / np.sqrt(dh), ds.transpose(0, 1, 3, 2) @ q / np.sqrt(dh)
    dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(b, n, 3 * d)
    grads = dict(x=dqkv @ wqkv.T, wqkv=np.einsum("bnd,bne->de", x, dqkv), bqkv=dqkv.sum((0, 1)), wo=dwo, bo=dbo)
    return out, grads


def test_the_xla_path_is_the_textbook_attention_with_its_gradients():
    rng = np.random.default_rng(0)
    b, n, d, heads = 2, 7, 16, 4
    args = dict(
        x=rng.standard_normal((b, n, d)),
        wqkv=rng.standard_normal((d, 3 * d)) / 4,
        bqkv=rng.standard_normal(3 * d) / 4,
        wo=rng.standard_normal((d, d)) / 4,
        bo=rng.standard_normal(d),
    )
    g = rng.standard_normal((b, n, d))
    want, want_grads = textbook(*args.values(), heads, g)

    def loss(a):
        out = vit.self_attention(a["x"], a["wqkv"], a["bqkv"], a["wo"], a["bo"], heads, implementation="xla")
        return jnp.sum(out * g.astype(np.float32)), out

    f32 = {k: jnp.asarray(v, jnp.float32) for k, v in args.items()}
    grads, out = jax.grad(loss, has_aux=True)(f32)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    for k, v in want_grads.items():
        np.testing.assert_allclose(grads[k], v, rtol=1e-4, atol=1e-4, err_msg=k)
    # bf16 inputs (logits and softmax in float32 inside): within bf16's rounding of the float64 answer.
    bf16 = {k: jnp.asarray(v, BF16) for k, v in args.items()}
    out16 = vit.self_attention(*bf16.values(), heads, implementation="xla")
    assert out16.dtype == BF16
    np.testing.assert_allclose(np.asarray(out16, np.float64), want, rtol=0.05, atol=0.05)


def test_gpu_flags_only_for_a_gpu_and_before_a_backend_starts(monkeypatch):
    monkeypatch.setattr(backend.xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert backend.configure_gpu() == []
    assert backend.gpu_selected() is False
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert backend.configure_gpu() == ["--xla_gpu_enable_latency_hiding_scheduler=true"]
    assert backend.os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_enable_latency_hiding_scheduler=true"
    assert backend.configure_gpu() == []  # once
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_latency_hiding_scheduler=false")  # the user's wins
    assert backend.configure_gpu() == []
    monkeypatch.undo()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert backend.configure_gpu() == []  # this process's backend runs already: too late, left alone
