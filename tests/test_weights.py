""".npz weights in the layouts of vision_transformer and big_vision: vitscale's conversion both ways,
the problems of a file that does not fit, and timm's own loader computing what vitscale computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitscale import config, pretrained
from vitscale.models import vit

D, DEPTH, MLP, HEADS, PATCH, SIZE, CHANNELS, CLASSES = 32, 2, 64, 4, 4, 16, 3, 5


def spec(pool="gap", scan=False, rep=None, **kw) -> config.ModelSpec:
    return config.ModelSpec(
        variant=f"Pico/{PATCH}",
        channels=CHANNELS,
        width=D,
        depth=DEPTH,
        mlp_dim=MLP,
        num_heads=HEADS,
        image_size=SIZE,
        pool_type=pool,
        scan=scan,
        representation_size=rep,
        **kw,
    )


def model(s: config.ModelSpec, gelu="tanh") -> vit.ViT:
    return vit.ViT(
        num_classes=CLASSES,
        patch_size=PATCH,
        width=D,
        depth=DEPTH,
        mlp_dim=MLP,
        num_heads=HEADS,
        pool_type=s.pool_type,
        scan=s.scan,
        representation_size=s.representation_size,
        gelu=gelu,
    )


def random_params(m: vit.ViT, seed=0) -> dict[str, np.ndarray]:
    """Every parameter random (the init zeroes the head and cls), LayerNorm scales around 1."""
    shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, CHANNELS))))["params"]
    rng = np.random.default_rng(seed)
    flat = pretrained.flatten(shapes)
    out = {}
    for k, a in flat.items():
        x = rng.normal(0, 0.2, a.shape).astype(np.float32)
        out[k] = 1 + x if k.endswith("scale") else x
    return out


def images(n=3, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, SIZE, SIZE, CHANNELS)).astype(np.float32)


def apply(m, flat, x):
    logits, out = m.apply({"params": pretrained.unflatten(flat)}, jnp.asarray(x))
    return np.asarray(out["encoded"]), np.asarray(out["pre_logits"]), np.asarray(logits)


def write_by_hand(flat: dict[str, np.ndarray], layout: str, scan: bool, pool: str) -> dict[str, np.ndarray]:
    """A file of `layout` written straight from the layouts' names (independent of vitscale.pretrained)."""
    bv = layout == "big_vision"
    ln1, mha, ln2, mlp = (
        ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
        if bv
        else ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    )
    out = {"embedding/kernel": flat["embedding/kernel"], "embedding/bias": flat["embedding/bias"]}
    pe = flat["pos_embedding"]
    if pool == "tok":
        out["cls"] = flat["cls"]
        if not bv:  # the class token's own position, zero: cls + 0 is what vitscale adds
            pe = np.concatenate([np.zeros((1, 1, D), np.float32), pe], axis=1)
    out["pos_embedding" if bv else "Transformer/posembed_input/pos_embedding"] = pe
    layers = []
    for i in range(DEPTH):
        get = (
            (lambda k, i=i: flat[f"Transformer/encoderblock/{k}"][i])
            if scan
            else (lambda k, i=i: flat[f"Transformer/encoderblock_{i}/{k}"])
        )
        qkv, qkv_b = get("Attention/qkv/kernel"), get("Attention/qkv/bias")
        layer = {}
        for j, name in enumerate(["query", "key", "value"]):
            layer[f"{mha}/{name}/kernel"] = qkv[:, j * D : (j + 1) * D].reshape(D, HEADS, D // HEADS)
            layer[f"{mha}/{name}/bias"] = qkv_b[j * D : (j + 1) * D].reshape(HEADS, D // HEADS)
        layer[f"{mha}/out/kernel"] = get("Attention/out/kernel").reshape(HEADS, D // HEADS, D)
        layer[f"{mha}/out/bias"] = get("Attention/out/bias")
        for p in ("scale", "bias"):
            layer[f"{ln1}/{p}"] = get(f"LayerNorm_0/{p}")
            layer[f"{ln2}/{p}"] = get(f"LayerNorm_1/{p}")
        for r in range(2):
            for p in ("kernel", "bias"):
                layer[f"{mlp}/Dense_{r}/{p}"] = get(f"MlpBlock/Dense_{r}/{p}")
        layers.append(layer)
    if scan:
        out |= {f"Transformer/encoderblock/{k}": np.stack([lay[k] for lay in layers]) for k in layers[0]}
    else:
        out |= {f"Transformer/encoderblock_{i}/{k}": v for i, lay in enumerate(layers) for k, v in lay.items()}
    for k, v in flat.items():
        if k.startswith(("Transformer/encoder_norm/", "head/", "pre_logits/")):
            out[k] = v
        elif k.startswith("MAPHead/"):
            out["MAPHead_0/" + k.removeprefix("MAPHead/")] = v
    return out


# ----------------------------------------------------------------------------- conversion, numpy and JAX
@pytest.mark.parametrize("layout", pretrained.LAYOUTS)
@pytest.mark.parametrize("pool,scan,rep", [("gap", False, None), ("tok", True, None), ("map", False, 24)])
def test_to_file_and_back_is_exact_and_matches_the_names(layout, pool, scan, rep):
    if layout == "vision_transformer" and pool == "map":
        pytest.skip("vision_transformer has no MAP head")
    s = spec(pool, scan, rep)
    flat = random_params(model(s))
    file = pretrained.to_file(flat, s, layout)
    assert set(file) == set(pretrained.expected_shapes(s, layout, scan, CLASSES))
    assert {k: v.shape for k, v in file.items()} == pretrained.expected_shapes(s, layout, scan, CLASSES)
    if rep is None:
        by_hand = write_by_hand(flat, layout, scan, pool)
        assert set(by_hand) == set(file)
        assert all(np.array_equal(by_hand[k], file[k]) for k in file)
    for prefix in ("", "params/", "params/img/"):
        extra = {"opt/state/x": np.zeros(3)} if prefix else {}  # optimizer state, outside the prefix
        back = pretrained.from_file({prefix + k: v for k, v in file.items()} | extra, s)
        assert set(back) == set(flat) and all(np.array_equal(back[k], flat[k]) for k in flat), prefix
    # another scan setting on either side: the same model
    other = pretrained.from_file(pretrained.to_file(flat, s, layout, scan=not scan), s)
    assert all(np.array_equal(other[k], flat[k]) for k in flat)


def test_a_vision_transformer_class_token_position_is_folded_into_cls():
    s = spec("tok")
    m = model(s)
    flat = random_params(m)
    file = write_by_hand(flat, "vision_transformer", False, "tok")
    pe = file["Transformer/posembed_input/pos_embedding"]
    pe[:, :1] = 0.5  # a released file's own class-token position
    file["cls"] = flat["cls"] - 0.5
    back = pretrained.from_file(file, s)
    assert back["pos_embedding"].shape == (1, (SIZE // PATCH) ** 2, D)
    x = images()
    for a, b in zip(apply(m, back, x), apply(m, flat, x)):
        np.testing.assert_allclose(a, b, atol=1e-5)  # (cls - 0.5) + 0.5 rounds


def test_shapes_come_from_headers_and_misfits_name_every_path(tmp_path):
    s = spec("tok", scan=True)
    flat = random_params(model(s))
    path = pretrained.save(tmp_path / "w.npz", {"params/" + k: v for k, v in pretrained.to_file(flat, s).items()})
    file, found = pretrained.check_file(path, s)
    assert found | {"file": None} == {
        "file": None,
        "variant": f"Pico/{PATCH}",
        "layout": "big_vision",
        "prefix": "params/",
        "scanned": True,
        "num_classes": CLASSES,
    }
    # at another resolution the position embedding is resized, not refused
    assert (
        pretrained.check_file(path, config.ModelSpec(**{**s.model_dump(), "image_size": 24}))[1]["posemb_grid"]
        == SIZE // PATCH
    )
    # wider, shallower, without the class token, and a representation layer the file lacks
    wrong = config.ModelSpec(
        **{**s.model_dump(), "width": 48, "depth": 1, "pool_type": "gap", "representation_size": 8}
    )
    with pytest.raises(config.ConfigError) as e:
        pretrained.check_file(path, wrong)
    text = str(e.value)
    assert "does not fit variant 'Pico/4'" in text
    assert "params/embedding/kernel: file [4, 4, 3, 32] vs model [4, 4, 3, 48]" in text
    assert "params/Transformer/encoderblock/LayerNorm_0/scale: file [2, 32] vs model [1, 48]" in text
    assert "params/cls: [1, 1, 32] in the file, not in the model (does the model need pool_type: tok?)" in text
    assert "params/pre_logits/kernel: missing from the file (the model needs [48, 8])" in text
    assert all(p.field == "pretrained" for p in e.value.problems)
    with pytest.raises(config.ConfigError, match="does not exist"):
        pretrained.check_file(tmp_path / "nowhere.npz", s)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(config.ConfigError, match="not a readable .npz"):
        pretrained.check_file(tmp_path / "bad.npz", s)


# ----------------------------------------------------------------------------- timm reads the files
CASES = [
    (layout, pool, scan, source)
    for layout in pretrained.LAYOUTS
    for pool in ("tok", "gap", "map")
    for scan in (False, True)
    for source in ("export", "by_hand")
    if not (layout == "vision_transformer" and (pool == "map" or scan))  # neither exists in vision_transformer
]
FAST = {
    ("big_vision", "map", True, "export"),
    ("big_vision", "tok", False, "by_hand"),
    ("vision_transformer", "gap", False, "by_hand"),
}
CASES = [c if c in FAST else pytest.param(*c, marks=pytest.mark.slow) for c in CASES]  # the full suite has them all
MAX_DIFF: dict[str, float] = {}


@pytest.mark.parametrize("layout,pool,scan,source", CASES)
def test_timm_loads_the_file_and_computes_the_same(layout, pool, scan, source, tmp_path):
    torch = pytest.importorskip("torch", reason="torch (the `bench` extra; `make test` installs it) is not installed")
    vt = pytest.importorskip("timm.models.vision_transformer", reason="timm (the `bench` extra) is not installed")
    gelu = "erf" if scan else "tanh"  # both flavours: timm's nn.GELU is erf, its 'gelu_tanh' flax's default
    s = spec(pool, scan)
    m = model(s, gelu)
    flat = random_params(m, seed=hash((layout, pool, scan)) % 1000)
    arrays = pretrained.to_file(flat, s, layout) if source == "export" else write_by_hand(flat, layout, scan, pool)
    if source == "by_hand" and scan:  # an image-text model's image tower (SigLIP) saved with its optimizer state
        arrays = {f"params/img/{k}": v for k, v in arrays.items()} | {"opt/x": np.zeros(2), "params/txt/y": np.ones(1)}
    path = pretrained.save(tmp_path / f"{layout}.npz", arrays)
    t = vt.VisionTransformer(
        img_size=SIZE,
        patch_size=PATCH,
        in_chans=CHANNELS,
        num_classes=CLASSES,
        global_pool={"tok": "token", "gap": "avg", "map": "map"}[pool],
        class_token=pool == "tok",
        no_embed_class=layout == "big_vision",  # big_vision adds the position embedding before the class token
        fc_norm=False,  # the encoder norm before pooling, as big_vision's gap
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=MLP / D,
        act_layer="gelu_tanh" if gelu == "tanh" else None,
    ).eval()
    t.load_pretrained(str(path))
    x = images()
    ours = apply(m, flat, x)
    with torch.no_grad():
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        tokens = t.forward_features(xt)
        theirs = [tokens.numpy(), t.forward_head(tokens, pre_logits=True).numpy(), t.forward_head(tokens).numpy()]
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs)]
    print(f"max |vitscale - timm| {layout} {pool} scan={scan} {source} gelu={gelu}: {diffs}")
    assert max(diffs) < 1e-4, diffs
    assert np.abs(ours[2]).max() > 0.1  # a head that computes something
