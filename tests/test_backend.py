"""The backend's CPU speed work against the plain path and closed forms: same outputs, same gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitscale import backend
from vitscale.models import vit


@pytest.mark.parametrize("d_in,d_out", [(6, 10), (10, 6)])  # both branches: x or the gradient narrower
def test_matmul_gradients_match_float64_closed_form(d_in, d_out):
    """backend.matmul's custom backward against dK = x^T g, dx = g K^T."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, d_in)).astype(np.float32)
    k = rng.normal(size=(d_in, d_out)).astype(np.float32)
    g = rng.normal(size=(3, 5, d_out)).astype(np.float32)
    y, vjp = jax.vjp(backend.matmul, jnp.asarray(x), jnp.asarray(k))
    dx, dk = vjp(jnp.asarray(g))
    x64, k64, g64 = (a.astype(np.float64) for a in (x, k, g))
    np.testing.assert_allclose(y, x64 @ k64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, g64 @ k64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, x64.reshape(-1, d_in).T @ g64.reshape(-1, d_out), rtol=1e-5, atol=1e-5)
    assert dk.dtype == jnp.float32 and dk.shape == (d_in, d_out)


def test_attention_core_ynn_matches_float64_textbook_attention():
    """attention_core_ynn's output and custom backward against softmax(q k^T) v and its gradients in float64."""
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.normal(size=(2, 3, 7, 5)).astype(np.float32) for _ in range(4))
    out, vjp = jax.vjp(backend.attention_core_ynn, *(jnp.asarray(a) for a in (q, k, v)))
    dq, dk, dv = vjp(jnp.asarray(g))
    q64, k64, v64, g64 = (a.astype(np.float64) for a in (q, k, v, g))
    logits = q64 @ np.swapaxes(k64, -1, -2)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    dw = g64 @ np.swapaxes(v64, -1, -2)
    dlogits = w * (dw - (dw * w).sum(-1, keepdims=True))
    np.testing.assert_allclose(out, w @ v64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dv, np.swapaxes(w, -1, -2) @ g64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dq, dlogits @ k64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dk, np.swapaxes(dlogits, -1, -2) @ q64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "pool,kernels",
    [
        ("gap", "CPU"),
        ("gap", "CPU_SMALL_HEADS"),
        pytest.param("tok", "CPU", marks=pytest.mark.slow),
        pytest.param("map", "CPU", marks=pytest.mark.slow),
    ],
)
def test_cpu_kernels_give_the_plain_models_outputs_and_gradients(pool, kernels):
    plain = vit.make_model("Atto/4", 10, pool_type=pool)
    fast = plain.clone(kernels=getattr(backend, kernels))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=4))
    params = plain.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)

    def loss(model):
        def f(p):
            logits, _ = model.apply({"params": p}, x)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0])

        return jax.jit(jax.value_and_grad(f))(params)

    (v_plain, g_plain), (v_fast, g_fast) = loss(plain), loss(fast)
    np.testing.assert_allclose(v_fast, v_plain, rtol=1e-5)
    flat_plain, flat_fast = jax.tree_util.tree_leaves_with_path(g_plain), jax.tree.leaves(g_fast)
    for (path, gp), gf in zip(flat_plain, flat_fast):
        np.testing.assert_allclose(gf, gp, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))


def test_gradient_chains_average_to_the_whole_batch_gradient():
    """Chained value_and_grad over 4 parts equals the whole batch's (a mean of equal-size means)."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 5)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(2).normal(size=(16, 3)), jnp.float32)
    vg = jax.value_and_grad(lambda w, x, y, rng: jnp.mean((x @ w - y) ** 2))
    v1, g1 = vg(w, x, y, None)
    v4, g4 = backend.chained(vg, 4)(w, x, y, jax.random.key(0))
    np.testing.assert_allclose(v4, v1, rtol=1e-6)
    np.testing.assert_allclose(g4, g1, rtol=1e-5, atol=1e-7)


def test_default_chains_and_the_switch(monkeypatch):
    assert backend.default_chains(256, "cpu") == 4
    assert backend.default_chains(32, "cpu") == 2  # 4 chains of 8 are below MIN_CHAIN_BATCH
    assert backend.default_chains(24, "cpu") == 1  # 2 chains of 12 are too
    assert backend.default_chains(96, "cpu") == 4 and backend.default_chains(34, "cpu") == 2
    assert backend.default_chains(256, "gpu") == backend.default_chains(256, "tpu") == 1
    # A group's copies side by side are chains already: fewer each, never below 1.
    assert backend.default_chains(256, "cpu", side_by_side=2) == 2
    assert backend.default_chains(256, "cpu", side_by_side=8) == backend.default_chains(32, "cpu", 2) == 1
    assert backend.copies_side_by_side("cpu") and not backend.copies_side_by_side("gpu")
    monkeypatch.setenv("VITSCALE_GROUP", "vmap")
    assert not backend.copies_side_by_side("cpu")
    monkeypatch.setenv("VITSCALE_GROUP", "unrolled")
    with pytest.raises(ValueError, match=r"VITSCALE_GROUP must be one of \['side-by-side', 'vmap'\], got 'unrolled'"):
        backend.copies_side_by_side("cpu")
    monkeypatch.delenv("VITSCALE_GROUP")
    assert backend.kernels_for("gpu") is vit.PLAIN
    assert backend.kernels_for("cpu") is backend.CPU
    assert backend.kernels_for("cpu", head_dim=16) is backend.CPU_SMALL_HEADS
    assert backend.kernels_for("cpu", head_dim=backend.SMALL_HEAD_DIM + 1) is backend.CPU
    assert backend.attention_of(backend.CPU_SMALL_HEADS) == "xla-cpu"
    monkeypatch.setenv("VITSCALE_KERNELS", "plain")
    assert backend.kernels_for("cpu") is vit.PLAIN
