"""muP (vitscale.mup): Yang et al.'s coordinate check, muP equal to the standard model at its base width,
the schema's refusals, and an exported muP model computing the same logits in timm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitscale import build, config, mup, pretrained

WIDTHS = (32, 64, 128, 256)  # 8x
SIZE, PATCH, CLASSES = 28, 7, 10


def cfg_at(width: int, parametrization: str, **kw) -> config.PretrainConfig:
    """A 2-layer ViT of `width` (2 heads, MLP 4x): the head dimension grows with width, so the attention
    rule is exercised too."""
    extra = {"base_width": WIDTHS[0]} if parametrization == "mup" else {}
    return config.PretrainConfig(
        variant=f"Atto/{PATCH}",
        image_size=SIZE,
        width=width,
        depth=2,
        num_heads=2,
        mlp_dim=4 * width,
        parametrization=parametrization,
        optimizer="adamw",
        weight_decay=0.0,
        grad_clip_norm=None,
        **extra,
        **kw,
    )


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(0, 1, (n, SIZE, SIZE, 1)), jnp.float32), jnp.asarray(rng.integers(0, CLASSES, n))


def train(cfg: config.PretrainConfig, lr: float, steps: int, seed=0):
    """(model, params at step 0, params after `steps` full-batch Adam steps at a constant rate)."""
    m = build.model(cfg, CLASSES)
    x, y = data()
    params = m.init(jax.random.key(seed), x[:1])["params"]
    tx = build.optimizer(cfg, optax.constant_schedule(lr))
    state = tx.init(params)

    def loss(p):
        logits = m.apply({"params": p}, x)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, state):
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    p = params
    for _ in range(steps):
        p, state = step(p, state)
    return m, params, p


def output_changes(m, p0, p1) -> dict[str, float]:
    """RMS over coordinates of each layer's output change between two parameter sets, on one batch."""
    x, _ = data(seed=1)
    outs = []
    for p in (p0, p1):
        _, state = m.apply({"params": p}, x, capture_intermediates=True, mutable=["intermediates"])
        flat = pretrained.flatten(state["intermediates"])
        outs.append({k.removesuffix("/__call__"): v[0] for k, v in flat.items() if _layer(k)})
    return {k: float(jnp.sqrt(jnp.mean(jnp.square(outs[1][k] - outs[0][k])))) for k in outs[0]}


def _layer(key: str) -> bool:
    """The layers the check follows: embedding, every block's attention, MLP, its hidden units, output, head."""
    name = key.removesuffix("/__call__")
    return (
        name in ("embedding", "head")
        or name.endswith(("Attention", "MlpBlock", "Dense_0"))
        or (name.startswith("Transformer/encoderblock_") and name.count("/") == 1)
    )


def test_coordinate_check_mup_keeps_every_layers_change_flat_and_standard_grows():
    """Yang et al. (2021) section 7's check: after a few Adam steps at one rate, the size of each layer's
    output change is about the same at every width under muP; under the standard one it grows."""
    changes = {
        p: {w: output_changes(*train(cfg_at(w, p), lr=3e-3, steps=4)) for w in WIDTHS} for p in ("mup", "standard")
    }
    layers = sorted(changes["mup"][WIDTHS[0]])
    assert {"embedding", "head", "Transformer/encoderblock_1/Attention", "Transformer/encoderblock_1/MlpBlock"} <= set(
        layers
    ), layers
    for layer in layers:
        mup_sizes = [changes["mup"][w][layer] for w in WIDTHS]
        std_sizes = [changes["standard"][w][layer] for w in WIDTHS]
        print(f"{layer}: mup {np.round(mup_sizes, 4)} standard {np.round(std_sizes, 4)}")
        assert max(mup_sizes) <= 2 * min(mup_sizes), (layer, mup_sizes)
        if layer != "embedding":  # the patch embedding's fan-in is fixed: its change is width-free in both
            assert std_sizes[-1] > 2 * std_sizes[0], (layer, std_sizes)


def test_at_the_base_width_mup_is_the_standard_model():
    """Every multiplier is 1 at base_width: same init, outputs and updates as the standard model (nothing
    initialises differently: the position embedding's std 1/sqrt(base_width) is 1/sqrt(width) there)."""
    base = config.PretrainConfig(variant="Pico/7", image_size=SIZE, parametrization="mup", base_width=64, base_depth=4)
    assert mup.multipliers(base).head_scale == mup.multipliers(base).q_scale == 1.0
    std = base.model_copy(update=dict(parametrization="standard", base_width=None, base_depth=None))
    runs = [train(c, lr=1e-3, steps=2) for c in (base, std)]
    x, _ = data(8)
    for (m, p0, p1), (ms, q0, q1) in [(runs[0], runs[1])]:
        for a, b in ((p0, q0), (p1, q1)):
            np.testing.assert_allclose(m.apply({"params": a}, x)[0], ms.apply({"params": b}, x)[0], atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), p1, q1)


def test_muP_widens_rates_only_of_hidden_matrices_and_keeps_lr_times_wd():
    """The hidden matrices' update is scaled by base/width; the decay term lr x wd is not."""
    cfg = cfg_at(128, "mup")
    rules = mup.multipliers(cfg).lr_rules
    from vitscale import optim

    tree = {
        "Transformer": {"encoderblock_0": {"MlpBlock": {"Dense_0": {"kernel": 1.0, "bias": 1.0}}}},
        "head": {"kernel": 1.0},
        "embedding": {"kernel": 1.0},
    }
    tx = optim.scale_by_path(rules)
    out, _ = tx.update(jax.tree.map(jnp.asarray, tree), tx.init(tree))
    assert float(out["Transformer"]["encoderblock_0"]["MlpBlock"]["Dense_0"]["kernel"]) == 0.25
    assert float(out["Transformer"]["encoderblock_0"]["MlpBlock"]["Dense_0"]["bias"]) == 1.0
    assert float(out["head"]["kernel"]) == float(out["embedding"]["kernel"]) == 1.0
    # Full optimizer, zero gradient: the update is the decay alone, -lr x wd x mult x p, whatever the rate rule.
    p = {"Transformer": {"encoderblock_0": {"MlpBlock": {"Dense_0": {"kernel": jnp.ones((2, 2))}}}}}
    opt = optim.make_optimizer("adamw", 0.1, weight_decay=1.0, lr_rules=rules, grad_clip_norm=None)
    upd, _ = opt.update(jax.tree.map(jnp.zeros_like, p), opt.init(p), p)
    np.testing.assert_allclose(upd["Transformer"]["encoderblock_0"]["MlpBlock"]["Dense_0"]["kernel"], -0.1 * 0.03)


@pytest.mark.parametrize(
    "params,field",
    [
        ({"parametrization": "mu-p"}, "parametrization"),
        ({"parametrization": "mup"}, "base_width"),
        ({"parametrization": "mup", "base_width": 0}, "base_width"),
        ({"parametrization": "mup", "base_width": 2.5}, "base_width"),
        ({"parametrization": "mup", "base_width": "wide"}, "base_width"),
        ({"base_width": 32}, "base_width"),
        ({"parametrization": "mup", "base_width": 32, "pool_type": "map"}, "pool_type"),
        ({"lr_rules": [["kernel$", -1.0]]}, "lr_rules"),
    ],
)
def test_bad_parametrization_names_the_field(params, field):
    with pytest.raises(config.ConfigError) as e:
        config.validate(config.PretrainConfig, params)
    assert [p.field for p in e.value.problems][0].startswith(field), e.value.lines()


def test_an_exported_mup_model_computes_the_same_logits_in_timm(tmp_path):
    """The multipliers folded into the weights (vitscale.mup.fold, what export writes) give a standard
    ViT: timm's loader on that file computes what the muP model computes."""
    torch = pytest.importorskip("torch", reason="torch (the `bench` extra; `make test` installs it) is not installed")
    vt = pytest.importorskip("timm.models.vision_transformer", reason="timm (the `bench` extra) is not installed")
    cfg = cfg_at(64, "mup", base_head_dim=8, base_depth=1)
    mult = mup.multipliers(cfg)
    assert mult.q_scale != 1 and mult.head_scale != 1 and mult.residual_scale != 1
    m = build.model(cfg, CLASSES)
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1))))["params"]
    rng = np.random.default_rng(0)
    flat = {k: rng.normal(0, 0.2, a.shape).astype(np.float32) for k, a in pretrained.flatten(shapes).items()}
    path = pretrained.save(
        tmp_path / "mup.npz", pretrained.to_file(mup.fold(flat, mult, 64), cfg.model_spec(), "big_vision")
    )
    t = vt.VisionTransformer(
        img_size=SIZE,
        patch_size=PATCH,
        in_chans=1,
        num_classes=CLASSES,
        global_pool="avg",
        class_token=False,
        no_embed_class=True,
        fc_norm=False,
        embed_dim=64,
        depth=2,
        num_heads=2,
        mlp_ratio=4,
        act_layer="gelu_tanh",
    ).eval()
    t.load_pretrained(str(path))
    x = np.asarray(data(4)[0])
    ours = np.asarray(m.apply({"params": pretrained.unflatten({k: jnp.asarray(v) for k, v in flat.items()})}, x)[0])
    with torch.no_grad():
        theirs = t(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(ours).max() > 0.1
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
