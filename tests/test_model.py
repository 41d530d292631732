"""The ViT against closed forms: parameter counts, position-embedding resizing, head init."""

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


def test_self_attention_matches_float64_reference():
    b, n, d, heads = 3, 7, 24, 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, n, d)).astype(np.float32)
    module = vit.Attention(num_heads=heads)
    params = module.init(jax.random.key(1), jnp.asarray(x))["params"]
    # Random biases too (they are zero at init), so the bias layout is checked.
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.3, jnp.float32), params)
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
    P = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    # The fused kernel's columns are [q | k | v], each head-major (as in big_vision / nn.Dense reshape).
    assert P["qkv"]["kernel"].shape == (d, 3 * d) and P["out"]["kernel"].shape == (d, d)
    wq, wk, wv = np.split(P["qkv"]["kernel"], 3, axis=1)
    bq, bk, bv = np.split(P["qkv"]["bias"], 3)
    x64 = x.astype(np.float64)
    want = _np_attention(x64, x64, wq, bq, wk, bk, wv, bv, P["out"]["kernel"], P["out"]["bias"], heads)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_map_head_matches_float64_reference():
    """MAP pooling: the probe attends over the tokens (flax's MultiHeadDotProductAttention), then a
    residual MLP on its LayerNorm, all recomputed in float64 from the parameters."""
    b, n, d, heads, m = 2, 5, 16, 4, 32
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, n, d)).astype(np.float32)
    head = vit.MAPHead(mlp_dim=m, num_heads=heads)
    params = head.init(jax.random.key(1), jnp.asarray(x))["params"]
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 0.3, jnp.float32), params)
    got = np.asarray(head.apply({"params": params}, jnp.asarray(x)))
    P = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    att = P["MultiHeadDotProductAttention_0"]
    w = lambda k: att[k]["kernel"].reshape(d, d)
    bias = lambda k: att[k]["bias"].reshape(d)
    probe = np.broadcast_to(P["probe"], (b, 1, d))
    y = _np_attention(
        x.astype(np.float64),
        probe,
        w("query"),
        bias("query"),
        w("key"),
        bias("key"),
        w("value"),
        bias("value"),
        att["out"]["kernel"].reshape(d, d),
        att["out"]["bias"],
        heads,
    )
    ln = P["LayerNorm_0"]
    z = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6) * ln["scale"] + ln["bias"]
    mlp = P["MlpBlock_0"]
    h = z @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"]
    gelu = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # flax's default (tanh) GELU
    want = (y + gelu @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"])[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
