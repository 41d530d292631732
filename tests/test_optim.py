"""Tests for vitscale.optim against independent references (numpy / optax).

Expected values are computed here from the formulas (float64 numpy, hand
arithmetic) or by optax's own implementation, never by vitscale.optim itself.
"""

import math

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from vitscale import optim

# ----------------------------------------------------------------------------
# Independent float64 reference of the paper's Adafactor + full chain.
# ----------------------------------------------------------------------------

# Path -> (shape, multiplier under DEFAULT_WD_RULES, factored by trailing dims).
SHAPES = {
    "head/kernel": ((64, 48), 3.0, True),
    "Transformer/stack/kernel": ((3, 40, 32), 0.03, True),
    "Transformer/narrow/kernel": ((16, 64), 0.03, False),  # 16 < 32.
    "Transformer/mha/kernel": ((40, 3, 32), 0.03, False),  # trailing 3 < 32.
    "Transformer/mlp/bias": ((100,), 0.0, False),
    "cls": ((1,), 0.0, False),
    "temperature": ((), 0.0, False),
}


def _nest(flat):
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def _bf16(x):
    """Rounds float64 -> float32 -> bfloat16 (as a f32 computation stored in
    bf16 would) and back to float64."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def _ref_lr(t, base, total, warmup, timescale, cooldown):
    """Closed-form rsqrt schedule written out independently."""
    lr = base * min(1.0, t / warmup) / math.sqrt(1.0 + max(t - warmup, 0) / timescale)
    return lr * min(1.0, max(0.0, (total - t) / cooldown))


def _ref_adafactor_run(params0, grads, lr_fn, wd, clip_norm, clip_rms, beta2_cap=0.999):
    """float64 numpy: clip -> paper Adafactor -> decoupled wd -> -lr(t)."""
    p = {k: np.asarray(v, np.float64) for k, v in params0.items()}
    stats = {}
    for k, (shape, _, factored) in SHAPES.items():
        if factored:
            stats[k] = [np.zeros(shape[:-1]), np.zeros(shape[:-2] + shape[-1:])]
        else:
            stats[k] = [np.zeros(shape)]
    m = {k: np.zeros(s[0]) for k, s in SHAPES.items()}
    for step, g_in in enumerate(grads):
        t = step + 1  # 1-based step of the second-moment schedule.
        g = {k: np.asarray(v, np.float64) for k, v in g_in.items()}
        norm = math.sqrt(sum(np.sum(v**2) for v in g.values()))
        if norm > clip_norm:
            g = {k: v * clip_norm / norm for k, v in g.items()}
        beta2 = min(beta2_cap, 1.0 - t**-0.8)
        lr = lr_fn(step)  # optax evaluates the schedule at the pre-update count.
        for k, (_, mult, factored) in SHAPES.items():
            g2 = g[k] ** 2 + 1e-30
            if factored:
                r, c = stats[k]
                r = beta2 * r + (1 - beta2) * g2.mean(axis=-1)
                c = beta2 * c + (1 - beta2) * g2.mean(axis=-2)
                stats[k] = [r, c]
                v_hat = r[..., :, None] * c[..., None, :] / r.mean(axis=-1)[..., None, None]
            else:
                v_hat = stats[k][0] = beta2 * stats[k][0] + (1 - beta2) * g2
            u = g[k] / np.sqrt(v_hat)
            if clip_rms is not None:
                u = u / max(1.0, math.sqrt(np.mean(u**2)) / clip_rms)
            m_new = 0.9 * m[k] + 0.1 * u  # Not debiased.
            m[k] = _bf16(m_new)  # Stored in bfloat16.
            p[k] = p[k] - lr * (m_new + wd * mult * p[k])
    return p


# The paper's cap 0.999 only binds after ~5600 steps; b2=0.8 binds from t=8.
@pytest.mark.parametrize("clip_rms,b2", [(None, 0.999), (1.0, 0.8)])
def test_adafactor_matches_float64_reference(clip_rms, b2):
    rng = np.random.default_rng(0)
    params0 = {k: rng.normal(size=s[0]).astype(np.float32) for k, s in SHAPES.items()}
    n_steps = 20
    # Per-element gradient scales vary across rows/cols so factoring matters;
    # the global norm (~100) is far above the clip threshold.
    grads = []
    for _ in range(n_steps):
        g = {}
        for k, (shape, _, _) in SHAPES.items():
            scale = np.exp(rng.normal(size=shape))
            g[k] = (rng.normal(size=shape) * scale).astype(np.float32)
        grads.append(g)
    sched_kw = dict(base=0.05, total=n_steps, warmup=3, timescale=5, cooldown=6)
    schedule = optim.make_schedule("rsqrt", 0.05, total_steps=n_steps, warmup_steps=3, timescale=5, cooldown_steps=6)
    wd = 0.5
    tx = optim.make_optimizer(
        "adafactor", schedule, weight_decay=wd, grad_clip_norm=1.0, clip_update_rms=clip_rms, b2=b2
    )

    @jax.jit
    def step(p, s, g):
        upd, s = tx.update(g, s, p)
        return optax.apply_updates(p, upd), s

    p = _nest({k: jnp.asarray(v) for k, v in params0.items()})
    state = tx.init(p)
    for g in grads:
        p, state = step(p, state, _nest({k: jnp.asarray(v) for k, v in g.items()}))
    got = flax.traverse_util.flatten_dict(p, sep="/")

    ref = _ref_adafactor_run(params0, grads, lambda t: _ref_lr(t, **sched_kw), wd, 1.0, clip_rms, beta2_cap=b2)
    for k in SHAPES:
        d_got = np.asarray(got[k], np.float64) - params0[k]
        d_ref = ref[k] - params0[k]
        assert np.abs(d_ref).max() > 1e-2, k  # The parameter really moved.
        err = np.abs(d_got - d_ref)
        tight = err <= 2e-5 * np.abs(d_ref) + 2e-6  # f32 arithmetic on params.
        # f32-vs-f64 arithmetic can flip a rare bf16 rounding of the momentum
        # (one bf16 ulp ~ 0.4% of one step's update, decaying with b1), so only a
        # handful of elements may be looser, and then by at most ~that much.
        assert tight.mean() >= 0.99, (k, tight.mean(), err.max())
        loose = 1e-2 * np.abs(d_ref) + 2e-3 * np.abs(d_ref).max()
        assert np.all(err <= loose), (k, err.max())


def test_factor_rule_largest_matches_optax_factored_rms():
    """factor_rule='largest' is big_vision's optax.scale_by_factored_rms."""
    shapes = {"a": (64, 48), "b": (40, 3, 32), "c": (16, 64), "d": (100,)}
    rng = np.random.default_rng(1)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    ours = optim.scale_by_factored_second_moment(factor_rule="largest")
    ref = optax.scale_by_factored_rms(
        min_dim_size_to_factor=32,
        decay_rate=0.8,
        epsilon=1e-30,
        decay_rate_fn=lambda i, e: jnp.minimum(0.999, 1.0 - (i + 1.0) ** -e),
    )
    s_ours, s_ref = ours.init(params), ref.init(params)
    for _ in range(5):
        g = {k: jnp.asarray(rng.normal(size=s) * np.exp(rng.normal(size=s)), jnp.float32) for k, s in shapes.items()}
        u_ours, s_ours = ours.update(g, s_ours, params)
        u_ref, s_ref = ref.update(g, s_ref, params)
        for k in shapes:
            np.testing.assert_allclose(u_ours[k], u_ref[k], rtol=1e-5, err_msg=k)


def test_adafactor_state_shapes_and_size():
    params = _nest({k: jax.ShapeDtypeStruct(s[0], jnp.float32) for k, s in SHAPES.items()})
    tx = optim.scale_by_paper_adafactor()
    state = jax.eval_shape(tx.init, params)
    fs = next(s for s in state if isinstance(s, optim.FactoredRMSState))
    v_row = flax.traverse_util.flatten_dict(fs.v_row, sep="/")
    v_col = flax.traverse_util.flatten_dict(fs.v_col, sep="/")
    v = flax.traverse_util.flatten_dict(fs.v, sep="/")
    assert v_row["head/kernel"].shape == (64,)
    assert v_col["head/kernel"].shape == (48,)
    assert v_row["Transformer/stack/kernel"].shape == (3, 40)
    assert v_col["Transformer/stack/kernel"].shape == (3, 32)
    assert v["Transformer/stack/kernel"].shape == (1,)
    for k in ("Transformer/narrow/kernel", "Transformer/mha/kernel", "Transformer/mlp/bias", "temperature"):
        assert v[k].shape == SHAPES[k][0], k
    momentum = [s for s in state if isinstance(s, optim.EmaInDtypeState)]
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(momentum[0].mu))

    # Large matrices: ~2 bytes/param (bf16 momentum) vs 8 for float32 Adam.
    big = {
        "k1": jax.ShapeDtypeStruct((1024, 4096), jnp.float32),
        "k2": jax.ShapeDtypeStruct((4096, 1024), jnp.float32),
        "bias": jax.ShapeDtypeStruct((4096,), jnp.float32),
    }
    ada = optim.state_bytes_per_param(optim.make_optimizer("adafactor", 1e-3), big)
    n = 2 * 1024 * 4096 + 4096
    # Hand count: bf16 momentum, f32 row/col stats, f32 full v for the bias,
    # (1,) f32 placeholders, int32 counters (second moment, lr schedule).
    expected = (2 * n + 4 * (2 * (1024 + 4096) + 4096 + 4 * 1) + 2 * 4) / n
    assert ada == pytest.approx(expected)
    assert ada < 2.01
    f32_adam = optim.state_bytes_per_param(optax.adam(1e-3), big)
    assert f32_adam == pytest.approx(8.0, abs=1e-3)


def test_adam_first_moment_is_bfloat16():
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
    for name in ("adam", "adamw"):
        state = optim.make_optimizer(name, 1e-3).init(params)
        adam = [s for s in state if isinstance(s, optax.ScaleByAdamState)][0]
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam.mu))
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(adam.nu))
    state = optim.make_optimizer("adam", 1e-3, mu_dtype="float32").init(params)
    adam = [s for s in state if isinstance(s, optax.ScaleByAdamState)][0]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(adam.mu))
    bpp = optim.state_bytes_per_param(
        optim.make_optimizer("adam", 1e-3), {"w": jax.ShapeDtypeStruct((1000, 1000), jnp.float32)}
    )
    assert bpp == pytest.approx(6.0, abs=1e-4)  # bf16 mu + f32 nu.


# ----------------------------------------------------------------------------
# Weight decay by path.
# ----------------------------------------------------------------------------

VIT_PATHS = {
    "head/kernel": 3.0,
    "head/bias": 0.0,
    "pre_logits/kernel": 0.03,
    "embedding/kernel": 0.03,
    "embedding/bias": 0.0,
    "pos_embedding": 0.0,
    "cls": 0.0,
    "MAPHead_0/probe": 0.0,
    "Transformer/encoderblock_0/MlpBlock/Dense_0/kernel": 0.03,
    "Transformer/encoderblock_0/MlpBlock/Dense_0/bias": 0.0,
    "Transformer/encoderblock_0/Attention/qkv/kernel": 0.03,
    "Transformer/encoderblock_0/LayerNorm_0/scale": 0.0,
    "Transformer/encoderblock_0/LayerNorm_0/bias": 0.0,
    "Transformer/encoder_norm/scale": 0.0,
}


def test_wd_multipliers_default_rules():
    params = _nest({k: np.zeros((2,)) for k in VIT_PATHS})
    mults = optim.wd_multipliers(params, optim.DEFAULT_WD_RULES)
    flat = flax.traverse_util.flatten_dict(mults, sep="/")
    assert flat == VIT_PATHS
    assert all(type(v) is float for v in flat.values())
    # FrozenDict params work the same way.
    frozen = optim.wd_multipliers(flax.core.freeze(params))
    assert flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen), sep="/") == VIT_PATHS


def test_wd_multipliers_first_match_wins():
    params = _nest({"head/kernel": 0.0, "body/kernel": 0.0, "body/bias": 0.0})
    flat = lambda t: flax.traverse_util.flatten_dict(t, sep="/")
    a = flat(optim.wd_multipliers(params, [("kernel$", 1.0), ("^head/kernel$", 5.0)]))
    b = flat(optim.wd_multipliers(params, [("^head/kernel$", 5.0), ("kernel$", 1.0)]))
    assert a == {"head/kernel": 1.0, "body/kernel": 1.0, "body/bias": 0.0}
    assert b == {"head/kernel": 5.0, "body/kernel": 1.0, "body/bias": 0.0}


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam", "adafactor"])
def test_decoupled_wd_with_zero_grads(name):
    lr, wd = 0.1, 0.5
    rng = np.random.default_rng(2)
    flat = {k: rng.normal(size=(3, 2)).astype(np.float32) for k in VIT_PATHS}
    params = _nest({k: jnp.asarray(v) for k, v in flat.items()})
    tx = optim.make_optimizer(name, lr, weight_decay=wd)
    zeros = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zeros, tx.init(params), params)
    new = flax.traverse_util.flatten_dict(optax.apply_updates(params, upd), sep="/")
    for k, mult in VIT_PATHS.items():
        expected = flat[k].astype(np.float64) * (1.0 - lr * wd * mult)
        np.testing.assert_allclose(new[k], expected, rtol=1e-6, atol=0, err_msg=k)


def test_wd_is_not_clipped():
    """Plain SGD: p1 = p0 - lr * (clip(g) + wd * mult * p0)."""
    p0 = np.array([1.0, -2.0, 3.0], np.float32)
    g = np.array([30.0, 40.0, 0.0], np.float32)  # Global norm 50 -> scale 1/50.
    tx = optim.make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=2.0, wd_rules=[(".*", 1.0)], grad_clip_norm=1.0)
    params = {"w": jnp.asarray(p0)}
    upd, _ = tx.update({"w": jnp.asarray(g)}, tx.init(params), params)
    expected = p0 - 0.1 * (g / 50.0 + 2.0 * p0)
    np.testing.assert_allclose(optax.apply_updates(params, upd)["w"], expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# Schedules.
# ----------------------------------------------------------------------------


def _values(schedule, steps):
    return [float(schedule(t)) for t in steps]


def test_rsqrt_schedule_closed_form():
    # T=1000, warmup=100, timescale=200, cooldown=200 (starts at t=800).
    s = optim.make_schedule("rsqrt", 1.0, 1000, warmup_steps=100, timescale=200, cooldown_steps=200)
    expected = {
        0: 0.0,
        50: 0.5,
        100: 1.0,
        300: 1 / math.sqrt(2.0),  # 1 + 200/200
        700: 0.5,  # 1 + 600/200 = 4
        800: 1 / math.sqrt(4.5),  # cooldown factor still 1
        900: 0.5 / math.sqrt(5.0),  # cooldown factor 100/200
        950: 0.25 / math.sqrt(5.25),
        1000: 0.0,
    }
    np.testing.assert_allclose(_values(s, expected), list(expected.values()), rtol=1e-6, atol=1e-7)
    # No warmup: rsqrt starts at base; cooldown optional.
    s = optim.make_schedule("rsqrt", 2e-3, 10**6, timescale=10_000)
    np.testing.assert_allclose(_values(s, [0, 30_000]), [2e-3, 1e-3], rtol=1e-6)


def test_cosine_linear_constant_closed_form():
    s = optim.make_schedule("cosine", 2.0, 110, warmup_steps=10, end_fraction=0.1)
    c = (1 + math.cos(math.pi / 4)) / 2
    expected = {0: 0.0, 5: 1.0, 10: 2.0, 35: 2 * (0.1 + 0.9 * c), 60: 1.1, 110: 0.2, 200: 0.2}
    np.testing.assert_allclose(_values(s, expected), list(expected.values()), rtol=1e-6, atol=1e-7)
    s = optim.make_schedule("linear", 1.0, 100)
    np.testing.assert_allclose(_values(s, [0, 25, 100]), [1.0, 0.75, 0.0], atol=1e-7)
    s = optim.make_schedule("linear", 1.0, 100, warmup_steps=20, end_fraction=0.5)
    np.testing.assert_allclose(_values(s, [10, 20, 60, 100]), [0.5, 1.0, 0.75, 0.5], atol=1e-7)
    s = optim.make_schedule("constant", 0.5, 100, warmup_steps=10, cooldown_steps=20)
    np.testing.assert_allclose(_values(s, [0, 5, 50, 80, 90, 100]), [0.0, 0.25, 0.5, 0.5, 0.25, 0.0], atol=1e-7)


def test_schedule_is_jittable_with_int32_count():
    s = optim.make_schedule("rsqrt", 1.0, 1000, warmup_steps=100, timescale=200)
    out = jax.jit(s)(jnp.int32(300))
    assert out.dtype == jnp.float32
    assert float(out) == pytest.approx(1 / math.sqrt(2.0), rel=1e-6)


def test_cooldown_branch():
    base, warmup, tau = 1e-3, 100, 1000
    long_run = lambda t: base * min(1.0, t / warmup) / math.sqrt(1 + max(t - warmup, 0) / tau)
    branch = optim.cooldown_branch_schedule(
        base, branch_start=5000, cooldown_steps=1000, warmup_steps=warmup, timescale=tau
    )
    before = [0, 50, 100, 2500, 4999, 5000]
    np.testing.assert_allclose(_values(branch, before), [long_run(t) for t in before], rtol=1e-6)
    np.testing.assert_allclose(
        _values(branch, [5250, 5500, 6000]), [0.75 * long_run(5250), 0.5 * long_run(5500), 0.0], rtol=1e-6, atol=0
    )
    tail = _values(branch, range(5000, 6001, 50))
    assert all(a > b for a, b in zip(tail, tail[1:]))


# ----------------------------------------------------------------------------
# Argument validation.
# ----------------------------------------------------------------------------

BAD_CALLS = [
    (lambda: optim.make_schedule("exp", 1.0, 10), ["kind", "'exp'", "rsqrt"]),
    (lambda: optim.make_schedule("rsqrt", 1.0, 0), ["total_steps", "0"]),
    (lambda: optim.make_schedule("rsqrt", 1.0, 10, warmup_steps=-1), ["warmup_steps", "-1"]),
    (lambda: optim.make_schedule("rsqrt", 1.0, 10, warmup_steps=11), ["warmup_steps", "11", "total_steps"]),
    (lambda: optim.make_schedule("rsqrt", 1.0, 10, cooldown_steps=-5), ["cooldown_steps", "-5"]),
    (lambda: optim.make_schedule("linear", 1.0, 10, warmup_steps=6, cooldown_steps=6), ["cooldown_steps"]),
    (lambda: optim.make_schedule("rsqrt", 1.0, 10, timescale=0), ["timescale"]),
    (lambda: optim.make_schedule("cosine", 1.0, 10, end_fraction=1.5), ["end_fraction", "1.5"]),
    (lambda: optim.make_schedule("cosine", -1.0, 10), ["base_lr"]),
    (lambda: optim.make_schedule("cosine", 1.0, 10.5), ["total_steps"]),
    (
        lambda: optim.cooldown_branch_schedule(1.0, branch_start=50, cooldown_steps=10, warmup_steps=100),
        ["branch_start", "warmup_steps"],
    ),
    (lambda: optim.cooldown_branch_schedule(1.0, branch_start=500, cooldown_steps=0), ["cooldown_steps"]),
    (
        lambda: optim.cooldown_branch_schedule(1.0, branch_start=500, cooldown_steps=10, kind="cosine"),
        ["kind", "rsqrt"],
    ),
    (lambda: optim.make_optimizer("lamb", 1e-3), ["name", "'lamb'", "adafactor", "sgd"]),
    (lambda: optim.make_optimizer("adam", 1e-3, b1=1.0), ["b1"]),
    (lambda: optim.make_optimizer("adam", 1e-3, b2=-0.1), ["b2"]),
    (lambda: optim.make_optimizer("sgd", 1e-3, momentum=1.5), ["momentum"]),
    (lambda: optim.make_optimizer("adam", 1e-3, grad_clip_norm=-1.0), ["grad_clip_norm"]),
    (lambda: optim.make_optimizer("adam", 1e-3, weight_decay=-0.1), ["weight_decay"]),
    (lambda: optim.make_optimizer("adam", 1e-3, mu_dtype="int8"), ["mu_dtype", "int8"]),
    (lambda: optim.make_optimizer("adam", 1e-3, wd_rules=[("(", 1.0)]), ["wd_rules"]),
    (lambda: optim.make_optimizer("adam", 1e-3, wd_rules=[("x", -1.0)]), ["wd_rules"]),
    (lambda: optim.make_optimizer("adafactor", 1e-3, clip_update_rms=0.0), ["clip_update_rms"]),
    (lambda: optim.make_optimizer("adam", 1e-3, clip_update_rms=1.0), ["clip_update_rms", "adafactor"]),
    (lambda: optim.wd_multipliers({"a": 0.0}, "kernel$"), ["wd_rules"]),
]


@pytest.mark.parametrize("call,words", BAD_CALLS)
def test_bad_arguments_raise_valueerror_naming_argument(call, words):
    with pytest.raises(ValueError) as exc:
        call()
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_accepted_names():
    assert set(optim.SCHEDULES) == {"rsqrt", "cosine", "linear", "constant"}
    assert set(optim.OPTIMIZERS) == {"adafactor", "adam", "adamw", "sgd"}
    for kind in optim.SCHEDULES:
        assert callable(optim.make_schedule(kind, 1.0, 10))
    for name in optim.OPTIMIZERS:
        assert isinstance(optim.make_optimizer(name, 1.0), optax.GradientTransformation)
