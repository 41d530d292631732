"""The ViT against closed forms: parameter counts, position-embedding resizing, head init."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitscale.models import vit


def closed_form_params(d, depth, m, p, c, n_tokens, k, pool="gap"):
    per_block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m + m * d + d)
    total = p * p * c * d + d + n_tokens * d + depth * per_block + 2 * d + d * k + k
    if pool == "tok":
        total += d
    if pool == "map":  # probe, q, kv, out, LayerNorm, MLP
        total += d + (d * d + d) + (d * 2 * d + 2 * d) + (d * d + d) + 2 * d + (d * m + m + m * d + d)
    return total


@pytest.mark.parametrize(
    "variant,size,c,pool",
    [("Pico/4", 28, 1, "gap"), ("Atto/7", 28, 1, "tok"), ("Femto/4", 32, 3, "map"), ("Ti/16", 224, 3, "gap")],
)
def test_param_count_matches_closed_form(variant, size, c, pool):
    model = vit.make_model(variant, 10, pool_type=pool)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, c)))
    n = sum(x.size for x in jax.tree.leaves(shapes))
    v = vit.decode_variant(variant)
    assert n == closed_form_params(v.width, v.depth, v.mlp_dim, v.patch_size, c, (size // v.patch_size) ** 2, 10, pool)


def test_variant_strings():
    v = vit.decode_variant("B/16")
    assert (v.width, v.depth, v.mlp_dim, v.num_heads, v.patch_size) == (768, 12, 3072, 12, 16)
    assert vit.decode_variant("So400m/14").mlp_dim == 4304
    for bad in ("B16", "Q/16", "B/x", ""):
        with pytest.raises(ValueError, match="variant"):
            vit.decode_variant(bad)


@pytest.mark.parametrize("pool", vit.POOL_TYPES)
@pytest.mark.parametrize("scan", [False, True])
def test_pool_types_and_zero_init_head(pool, scan):
    model = vit.make_model("Atto/7", 5, pool_type=pool, scan=scan, remat=scan, head_bias_init=-10.0)
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    params = model.init(jax.random.key(0), x)
    logits, out = model.apply(params, x)
    expect = (2, 16, 5) if pool == "none" else (2, 5)
    assert logits.shape == expect
    np.testing.assert_allclose(logits, -10.0)  # zero kernel: logits are the bias
    assert out["pre_logits"].shape[-1] == 32


def test_bf16_activations_keep_f32_params():
    model = vit.make_model("Atto/7", 10, dtype="bfloat16")
    x = jnp.ones((2, 28, 28, 1))
    params = model.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits, out = model.apply(params, x)
    assert logits.dtype == jnp.float32 and out["encoded"].dtype == jnp.bfloat16


def test_posemb_resize_is_exact_on_a_bilinear_function():
    """Resizing a grid sampled from f(y, x) = a + b y + c x + e x y (corners aligned) gives f on
    the new grid exactly: bilinear interpolation reproduces bilinear functions."""

    def grid(n, d=3):
        y, x = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
        coefs = np.array([[0.5, 1.0, -2.0, 3.0], [1.0, 0.0, 1.0, 0.0], [-1.0, 2.0, 0.5, -4.0]])
        f = np.stack([a + b * y + c * x + e * x * y for a, b, c, e in coefs[:d]], -1)
        return f.reshape(1, n * n, d)

    np.testing.assert_allclose(vit.resize_posemb(grid(7), (12, 12)), grid(12), atol=1e-12)
    np.testing.assert_allclose(vit.resize_posemb(grid(12), (5, 5)), grid(5), atol=1e-12)


def test_model_trained_at_one_resolution_runs_at_another():
    small, big = vit.make_model("Atto/4", 10), vit.make_model("Atto/4", 10)
    p28 = small.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    target = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros((1, 40, 40, 1)))["params"]
    p40 = vit.adapt_params(p28, target)
    assert p40["pos_embedding"].shape == (1, 100, 32)
    logits, _ = big.apply({"params": p40}, jnp.ones((2, 40, 40, 1)))
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    with pytest.raises(ValueError, match="embedding/kernel"):
        other = jax.eval_shape(vit.make_model("Atto/7", 10).init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
        vit.adapt_params(p28, other["params"])


def test_sincos2d_posemb_properties():
    pe = np.asarray(vit.sincos2d_posemb(4, 4, 16))
    assert pe.shape == (1, 16, 16)
    # The first quarter is sin(x * omega) with omega_0 = 1: position (row 0, col j) gives sin(j).
    np.testing.assert_allclose(pe[0, :4, 0], np.sin(np.arange(4)), atol=1e-6)


def _np_attention(x, q_in, wq, bq, wk, bk, wv, bv, wo, bo, heads):
    """Multi-head attention in float64 numpy, straight from the definition."""
    b, n, d = x.shape
    dh = d // heads
    split = lambda t: t.reshape(b, -1, heads, dh).transpose(0, 2, 1, 3)
    q, k, v = split(q_in @ wq + bq), split(x @ wk + bk), split(x @ wv + bv)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(b, -1, d) @ wo + bo


@pytest.mark.parametrize("probe", [False, True])
def test_attention_matches_float64_reference(probe):
    b, n, d, heads = 3, 7, 24, 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, n, d)).astype(np.float32)
    q_in = rng.normal(size=(b, 1, d)).astype(np.float32) if probe else None
    module = vit.Attention(num_heads=heads)
    params = module.init(jax.random.key(1), jnp.asarray(x), None if q_in is None else jnp.asarray(q_in))["params"]
    # Random biases too (they are zero at init), so the bias layout is checked.
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.3, jnp.float32), params)
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x), None if q_in is None else jnp.asarray(q_in)))
    P = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    if probe:
        wq, bq = P["q"]["kernel"], P["q"]["bias"]
        wk, wv = np.split(P["kv"]["kernel"], 2, axis=1)
        bk, bv = np.split(P["kv"]["bias"], 2)
        want = _np_attention(
            x.astype(np.float64),
            q_in.astype(np.float64),
            wq,
            bq,
            wk,
            bk,
            wv,
            bv,
            P["out"]["kernel"],
            P["out"]["bias"],
            heads,
        )
    else:
        # The fused kernel's columns are [q | k | v], each head-major (as in big_vision / nn.Dense reshape).
        assert P["qkv"]["kernel"].shape == (d, 3 * d) and P["out"]["kernel"].shape == (d, d)
        wq, wk, wv = np.split(P["qkv"]["kernel"], 3, axis=1)
        bq, bk, bv = np.split(P["qkv"]["bias"], 3)
        x64 = x.astype(np.float64)
        want = _np_attention(x64, x64, wq, bq, wk, bk, wv, bv, P["out"]["kernel"], P["out"]["bias"], heads)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("d_in,d_out", [(6, 10), (10, 6)])  # both branches: x or the gradient narrower
def test_matmul_gradients_match_float64_closed_form(monkeypatch, transposed, d_in, d_out):
    """vit.matmul's custom backward (the XLA:CPU one and the plain one) against dK = x^T g, dx = g K^T."""
    monkeypatch.setattr(vit, "_transpose_weight_grads", lambda: transposed)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, d_in)).astype(np.float32)
    k = rng.normal(size=(d_in, d_out)).astype(np.float32)
    g = rng.normal(size=(3, 5, d_out)).astype(np.float32)
    y, vjp = jax.vjp(vit.matmul, jnp.asarray(x), jnp.asarray(k))
    dx, dk = vjp(jnp.asarray(g))
    x64, k64, g64 = (a.astype(np.float64) for a in (x, k, g))
    np.testing.assert_allclose(y, x64 @ k64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, g64 @ k64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, x64.reshape(-1, d_in).T @ g64.reshape(-1, d_out), rtol=1e-5, atol=1e-5)
    assert dk.dtype == jnp.float32 and dk.shape == (d_in, d_out)


def _dots_outside_ynnpack(hlo: str) -> list[str]:
    """The dot instructions of compiled HLO that XLA:CPU did not hand to YNNPACK."""
    ynn = set(re.findall(r"%ynn_fusion[\w.]* = .*?calls=%([\w.\-]+)", hlo))
    out, inside = [], False
    for line in hlo.splitlines():
        if not line.startswith(" "):
            m = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", line)
            inside = bool(m) and m.group(1) in ynn
        elif not inside and re.search(r"= \S+ dot\(", line):
            out.append(line.strip())
    return out


def test_mlp_backward_products_all_go_to_ynnpack():
    """On the CPU, the MLP's weight gradients are products XLA hands to YNNPACK (with autodiff's own
    backward one of them was an Eigen dot at about half the matmul peak)."""
    if jax.default_backend() != "cpu":
        pytest.skip("XLA:CPU only")
    mlp = vit.MlpBlock(mlp_dim=64)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 32)), jnp.float32)
    params = mlp.init(jax.random.key(0), x)["params"]
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(mlp.apply({"params": p}, x) ** 2)))
    hlo = grad.lower(params, x).compile().as_text()
    assert "ynn_fusion" in hlo
    assert _dots_outside_ynnpack(hlo) == []
    # The same MLP through nn.Dense, autodiff's backward: its weight gradients are not YNNPACK's.

    class DenseMlp(vit.nn.Module):
        @vit.nn.compact
        def __call__(self, x):
            return vit.nn.Dense(32, name="Dense_1")(vit.nn.gelu(vit.nn.Dense(64, name="Dense_0")(x)))

    ref = jax.jit(jax.grad(lambda p, x: jnp.sum(DenseMlp().apply({"params": p}, x) ** 2)))
    assert _dots_outside_ynnpack(ref.lower(params, x).compile().as_text()) != []
    for got, want in zip(jax.tree.leaves(grad(params, x)), jax.tree.leaves(ref(params, x))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
