"""Where a model's weights come from (a pretraining run folder, a released or exported .npz, a random
init), and fitting loaded weights to a model: the one place either happens.

Released ViT weights in, big_vision weights out: the `.npz` layouts, their names, their shapes. The
functions that read, check and convert those files use numpy only (no JAX), so that a program's
`check(cfg)` can read a file's names and shapes before any compute. Two layouts, both flat `.npz`
files whose keys are '/'-joined parameter paths:

  layout              from                                  block names
  vision_transformer  vit_jax/models_vit.py (AugReg files)  LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
                                                            MlpBlock_3 (pre-Linen numbering)
  big_vision          big_vision/models/vit.py              LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
                                                            MlpBlock_0

and the same top level: `embedding/{kernel,bias}` [p, p, C, D], `cls` [1, 1, D], the position
embedding (vision_transformer: `Transformer/posembed_input/pos_embedding` [1, 1+N, D] with the
class token's position first; big_vision: `pos_embedding` [1, N, D], added before the class token
is prepended, as vitscale does), `Transformer/encoderblock_{i}/...` (big_vision also scanned:
`Transformer/encoderblock/...` with the layers on a leading axis), `Transformer/encoder_norm`,
`MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}`, an optional tanh
representation layer `pre_logits` and `head`. Attention is query, key, value {kernel [D, H, D/H],
bias [H, D/H]} and out {kernel [H, D/H, D], bias [D]}; vitscale's own model stores one fused
`Attention/qkv` [D, 3D] (columns q | k | v, head-major) and `Attention/out` [D, D]. Checkpoints
saved with optimizer state or image-text models keep the image model under `params/` (big_vision),
`params/img/` (SigLIP, LiT) or `opt/target/` (old vision_transformer files); keys outside that
prefix (optimizer state, the text tower) are ignored.

Importing a vision_transformer file folds the class token's position embedding into `cls` (as
big_vision's `fix_old_checkpoints` does: the sum the model would form, formed once); exporting to
that layout writes a zero position for the class token. The head may have any number of classes.
The model a file must fit is a `config.ModelSpec` (a PretrainConfig is one; `.shape` resolves the variant).
"""

from __future__ import annotations

import dataclasses
import sys
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitscale import build, checkpoints, config, loop, runs
from vitscale.data import datasets
from vitscale.models import vit

RANDOM = config.RANDOM


@dataclasses.dataclass
class Pretrained:
    """A model to transfer: its pretraining parameters, its weights, and the trainer of its shape
    (whose `features` gives the frozen pre_logits for few-shot evaluation)."""

    name: str  # "pretrained" or "random": how reports label it
    cfg: config.PretrainConfig
    params: Any
    step: int | None  # pretraining steps behind the weights (0: a random init; None: a weights file's)
    source: str  # the run folder, the .npz file, or "random"
    trainer: loop.Trainer
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)  # where the weights came from (reports)

    def features(self, images: jax.Array) -> jax.Array:
        return self.trainer.features(self.params, images)


def read_pretrain_config(run_dir: Path) -> config.PretrainConfig:
    """The PretrainConfig a run folder was made with (its params.yaml)."""
    try:
        return config.validate(config.PretrainConfig, config.load_yaml(run_dir / "params.yaml"))
    except config.ConfigError as e:
        raise config.ConfigError(
            [config.Problem("pretrained", f"{run_dir / 'params.yaml'} is not a valid pretraining parameter file: {e}")]
        ) from None


def run_classes(run_dir: Path) -> int:
    """The class count of a run's model, from its newest checkpoint's head shape (no dataset opened)."""
    shapes, _ = checkpoints.param_shapes(run_dir / "ckpt")
    if shapes is None or "head" not in shapes:
        raise config.ConfigError([config.Problem("pretrained", f"no checkpoint in {run_dir / 'ckpt'} could be read")])
    return shapes["head"]["bias"][0]


def read_run(path: str | Path) -> tuple[Path, config.PretrainConfig, Any, int]:
    """(run folder, its config, its newest readable params as numpy, their step): no optimizer, no dataset."""
    run = runs.find_run(path)
    cfg = read_pretrain_config(run)
    params, step = checkpoints.restore_params(run / "ckpt")
    _say_skipped(run, step)
    return run, cfg, params, step


def _say_skipped(run: Path, step: int | None) -> None:
    """One line when the newest checkpoint of `run` could not be read and an older `step` is used
    instead; a ConfigError naming the damaged steps when none could be read (step None)."""
    skipped = checkpoints.newer_than(run / "ckpt", step)
    damaged = ("step " if len(skipped) == 1 else "steps ") + ", ".join(str(s) for s in skipped)
    if step is None:
        problem = f"no checkpoint in {run / 'ckpt'} could be read (damaged: {damaged})"
        raise config.ConfigError([config.Problem("pretrained", problem)])
    if skipped:
        print(
            f"note: {run / 'ckpt'}: the checkpoint at {damaged} is unreadable; using step {step}, "
            "the newest readable one",
            file=sys.stderr,
        )


def load_run(path: str | Path, mesh) -> Pretrained:
    """The newest readable checkpoint of a pretraining run folder: restore the state, keep its params."""
    run = runs.find_run(path)
    cfg = read_pretrain_config(run)
    trainer = build.trainer(cfg, mesh, run_classes(run))
    mngr = checkpoints.manager(run / "ckpt", keep=cfg.keep_checkpoints)
    try:
        state, _ = checkpoints.restore_latest(mngr, trainer.abstract_state(), move_aside=False)
    finally:
        mngr.close()
    step = None if state is None else int(jax.device_get(state.step))
    _say_skipped(run, step)
    origin = {"file": str(run), "layout": "vitscale run folder (orbax)", "variant": cfg.variant, "step": step}
    return Pretrained("pretrained", cfg, state.params, step, str(run), trainer, origin)


def load_npz(path: str | Path, cfg: config.PretrainConfig, mesh) -> Pretrained:
    """Released or exported weights (a .npz file, read by `load`) for the model `cfg` describes, head and all."""
    loaded, found = load(path, cfg.model_spec())
    classes = found["num_classes"] or 1
    trainer = build.trainer(cfg, mesh, classes)
    params = fit(unflatten(loaded), trainer.model, build.image_shape(cfg), head="keep")
    params = jax.device_put(params, trainer.state_shardings.params)
    return Pretrained("pretrained", cfg, params, None, found["file"], trainer, found)


def dataset_classes(dataset: str, data_dir: str | None = None) -> int:
    """Class count from a dataset's metadata (no decoding)."""
    builder = datasets.get_builder(dataset, data_dir)
    label_key = (builder.info.supervised_keys or ("image", "label"))[1]
    return builder.info.features[label_key].num_classes


def random_init(cfg: config.PretrainConfig, mesh, seed: int = 0) -> Pretrained:
    """An untrained model of the shape `cfg` describes (the baseline a pretrained model must beat),
    with a head for the classes of its pretraining dataset."""
    trainer = build.trainer(cfg, mesh, dataset_classes(cfg.dataset, cfg.data_dir), seed=seed)
    params = trainer.init_fn().params
    origin = {"file": RANDOM, "layout": "random init", "variant": cfg.variant, "seed": seed}
    return Pretrained(RANDOM, cfg, params, 0, RANDOM, trainer, origin)


def fit(params: Any, model: vit.ViT, image_shape: tuple[int, int, int], head: str | Any = "zero") -> Any:
    """Loaded `params` (a nested tree) fitted to `model` at `image_shape`: the position embedding resized
    (bilinearly) to its patch grid, the rest as loaded; the head: "zero" a zero head of the model's
    class count (transfer), "keep" the loaded one when it fits (else zeros), or a tree to use when the
    loaded one does not fit (a fresh init's). Any other shape mismatch is an error naming the
    parameter (vit.adapt_params)."""
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))["params"])
    zeros = {k: np.zeros(v.shape, v.dtype) for k, v in target["head"].items()}
    if isinstance(head, str) and head == "zero":
        if "head" not in params:
            raise ValueError(f"pretrained parameters have no 'head' to replace (top level: {sorted(params)})")
        new_head = zeros
    elif "head" in params and all(params["head"][k].shape == v.shape for k, v in target["head"].items()):
        new_head = params["head"]
    else:
        new_head = zeros if isinstance(head, str) else head
    return vit.adapt_params({**{k: v for k, v in params.items() if k != "head"}, "head": new_head}, target)


def start_from_file(cfg: config.PretrainConfig, trainer: loop.Trainer):
    """Step 0 of a run with `init_from`: the file's weights (a head of another class count: the fresh init's)."""
    loaded, _ = load(cfg.init_from, cfg.model_spec(), field="init_from")
    fresh = trainer.init_fn().params
    params = fit(unflatten(loaded), trainer.model, build.image_shape(cfg), head=fresh["head"])
    return trainer.start_from(params), None


# ----------------------------------------------------------------------------- .npz files: layouts, reading
LAYOUTS = ("big_vision", "vision_transformer")
PREFIXES = ("params/img/", "params/", "opt/target/", "")
BLOCK_NAMES = {  # (pre-attention norm, attention, pre-MLP norm, MLP) inside a block
    "vitscale": ("LayerNorm_0", "Attention", "LayerNorm_1", "MlpBlock"),
    "big_vision": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
    "vision_transformer": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
}
POSEMB_KEY = {"big_vision": "pos_embedding", "vision_transformer": "Transformer/posembed_input/pos_embedding"}
MAP_KEY = {"vitscale": "MAPHead", "big_vision": "MAPHead_0", "vision_transformer": "MAPHead_0"}
MAX_LINES = 40  # problems listed before "... and N more"


def find_file(path: str | Path, field: str = "pretrained") -> Path:
    """A .npz file named absolute or relative to the working directory or the study folder."""
    found, tried = runs.locate(path, Path.is_file)
    if found is None:
        looked = ", ".join(str(p) for p in tried)
        raise config.ConfigError(
            [config.Problem(field, f"weights file {str(path)!r} does not exist (looked at {looked})")]
        )
    return found


def read_shapes(path: Path, field: str = "pretrained") -> dict[str, tuple[int, ...]]:
    """Every array's key and shape, from the .npy headers inside the .npz (no array is read)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, _ = read(f)
                shapes[info.filename.removesuffix(".npy")] = tuple(int(n) for n in shape)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise config.ConfigError([config.Problem(field, f"{path} is not a readable .npz file: {e}")]) from None
    return shapes


def find_prefix(keys) -> str:
    """Where the image model's parameters start (the first of PREFIXES holding embedding/kernel)."""
    keys = set(keys)
    return next((p for p in PREFIXES if f"{p}embedding/kernel" in keys), "")


def detect_layout(keys) -> str:
    """'vision_transformer' (pre-Linen names) or 'big_vision' (Linen names), from a file's keys."""
    keys = list(keys)
    if any(k.startswith("Transformer/posembed_input/") or "MultiHeadDotProductAttention_1/" in k for k in keys):
        return "vision_transformer"
    return "big_vision"


def _square(n: int) -> bool:
    return n > 0 and round(n**0.5) ** 2 == n


# ----------------------------------------------------------------------------- the names a model needs
def _block_shapes(spec: config.ModelSpec, layout: str) -> dict[str, tuple[int, ...]]:
    d, h, m = spec.shape.width, spec.shape.num_heads, spec.shape.mlp_dim
    ln1, attn, ln2, mlp = BLOCK_NAMES[layout]
    out = {f"{ln}/{p}": (d,) for ln in (ln1, ln2) for p in ("scale", "bias")}
    if layout == "vitscale":
        out |= {f"{attn}/qkv/kernel": (d, 3 * d), f"{attn}/qkv/bias": (3 * d,)}
        out |= {f"{attn}/out/kernel": (d, d), f"{attn}/out/bias": (d,)}
    else:
        for n in ("query", "key", "value"):
            out |= {f"{attn}/{n}/kernel": (d, h, d // h), f"{attn}/{n}/bias": (h, d // h)}
        out |= {f"{attn}/out/kernel": (h, d // h, d), f"{attn}/out/bias": (d,)}
    out |= {f"{mlp}/Dense_0/kernel": (d, m), f"{mlp}/Dense_0/bias": (m,)}
    out |= {f"{mlp}/Dense_1/kernel": (m, d), f"{mlp}/Dense_1/bias": (d,)}
    return out


def expected_shapes(
    spec: config.ModelSpec, layout: str, scanned: bool, num_classes: int | None = None
) -> dict[str, tuple]:
    """Key -> shape of a file of `layout` holding `spec`'s model (blocks stacked if `scanned`); the
    head's class count is `num_classes` (None: left out), the position embedding at `spec`'s grid."""
    shape = spec.shape
    d, n = shape.width, spec.grid**2
    out: dict[str, tuple] = {"embedding/kernel": (shape.patch_size, shape.patch_size, spec.channels, d)}
    out["embedding/bias"] = (d,)
    tok = spec.pool_type == "tok"
    if tok:
        out["cls"] = (1, 1, d)
    if spec.posemb == "learn":
        out[POSEMB_KEY[layout]] = (1, n + (tok and layout == "vision_transformer"), d)
    block = _block_shapes(spec, layout)
    if scanned:
        out |= {f"Transformer/encoderblock/{k}": (shape.depth, *s) for k, s in block.items()}
    else:
        out |= {f"Transformer/encoderblock_{i}/{k}": s for i in range(shape.depth) for k, s in block.items()}
    out |= {"Transformer/encoder_norm/scale": (d,), "Transformer/encoder_norm/bias": (d,)}
    if spec.pool_type == "map":
        head = MAP_KEY[layout]
        out[f"{head}/probe"] = (1, 1, d)
        out |= {f"{head}/{k}": s for k, s in _block_shapes(spec, "big_vision").items() if "LayerNorm_1" not in k}
    r = spec.representation_size
    if r:
        out |= {"pre_logits/kernel": (d, r), "pre_logits/bias": (r,)}
    if num_classes is not None:
        out |= {"head/kernel": (r or d, num_classes), "head/bias": (num_classes,)}
    return out


def check_shapes(
    shapes: dict[str, tuple], spec: config.ModelSpec, field: str = "pretrained"
) -> tuple[list[config.Problem], dict]:
    """The problems of a file's key -> shape table against `spec` (missing and unexpected keys, shapes
    that do not fit, one line each with both shapes), and what was found: {layout, prefix, scanned,
    num_classes, posemb_grid}."""
    prefix = find_prefix(shapes)
    own = {k.removeprefix(prefix): s for k, s in shapes.items() if k.startswith(prefix)}
    layout = detect_layout(own)
    scanned = any(k.startswith("Transformer/encoderblock/") for k in own)
    head = own.get("head/bias")
    num_classes = head[0] if head and len(head) == 1 else None
    want, shape = expected_shapes(spec, layout, scanned, num_classes), spec.shape
    found = {"layout": layout, "prefix": prefix, "scanned": scanned, "num_classes": num_classes}
    lines = []
    pos = POSEMB_KEY[layout]
    for key in [*want, *sorted(k for k in own if k not in want)]:  # the model's order, then the file's extras
        have, need = own.get(key), want.get(key)
        if have == need:
            continue
        if key == pos and have and need and len(have) == 3 and have[0] == 1 and have[2] == need[2]:
            extra = int(spec.pool_type == "tok" and layout == "vision_transformer")
            if _square(have[1] - extra):  # another resolution: resized bilinearly on load
                found["posemb_grid"] = round((have[1] - extra) ** 0.5)
                continue
        if key in ("head/kernel", "head/bias") and have and key not in want:
            continue
        if need is None:
            lines.append(f"{prefix}{key}: {list(have)} in the file, not in the model{_hint(key)}")
        elif have is None:
            lines.append(f"{prefix}{key}: missing from the file (the model needs {list(need)})")
        else:
            lines.append(f"{prefix}{key}: file {list(have)} vs model {list(need)}")
    if lines:
        what = (
            f"a {layout} file{' (scanned)' if scanned else ''} under prefix {prefix or '(none)'!r} does not fit "
            f"variant {spec.variant!r} (width {shape.width}, depth {shape.depth}, mlp_dim {shape.mlp_dim}, heads "
            f"{shape.num_heads}, patch {shape.patch_size}, channels {spec.channels}, pool_type {spec.pool_type!r}, "
            f"posemb {spec.posemb!r}, representation_size {spec.representation_size})"
        )
        shown = lines[:MAX_LINES] + ([f"... and {len(lines) - MAX_LINES} more"] if len(lines) > MAX_LINES else [])
        return [config.Problem(field, what)] + [config.Problem(field, line) for line in shown], found
    return [], found


def _hint(key: str) -> str:
    for part, hint in (
        ("pre_logits/", "representation_size"),
        ("cls", "pool_type: tok"),
        ("MAPHead_0/", "pool_type: map"),
        ("pos_embedding", "posemb: learn"),
    ):
        if key.startswith(part) or f"/{part}" in key:
            return f" (does the model need {hint}?)"
    return ""


def check_file(path: str | Path, spec: config.ModelSpec, field: str = "pretrained") -> tuple[Path, dict]:
    """The file `path` names, checked against `spec` with numpy only; a ConfigError lists every problem.
    Returns (the file, what was found in it)."""
    file = find_file(path, field)
    problems, found = check_shapes(read_shapes(file, field), spec, field)
    if problems:
        raise config.ConfigError(problems)
    return file, {"file": str(file), "variant": spec.variant, **found}


# ----------------------------------------------------------------------------- converting
def _split_heads(a: np.ndarray, h: int) -> np.ndarray:  # [..., D] -> [..., H, D/H]
    return a.reshape(*a.shape[:-1], h, a.shape[-1] // h)


def _block_to_file(p: dict[str, np.ndarray], spec: config.ModelSpec, layout: str) -> dict[str, np.ndarray]:
    """One of vitscale's blocks (flat, '/'-keyed, optionally stacked on a leading axis) in `layout`."""
    ln1, attn, ln2, mlp = BLOCK_NAMES[layout]
    h, d = spec.shape.num_heads, spec.shape.width
    out = {f"{ln1}/{k}": p[f"LayerNorm_0/{k}"] for k in ("scale", "bias")}
    out |= {f"{ln2}/{k}": p[f"LayerNorm_1/{k}"] for k in ("scale", "bias")}
    kernel, bias = p["Attention/qkv/kernel"], p["Attention/qkv/bias"]
    for i, n in enumerate(("query", "key", "value")):
        out[f"{attn}/{n}/kernel"] = _split_heads(kernel[..., i * d : (i + 1) * d], h)
        out[f"{attn}/{n}/bias"] = _split_heads(bias[..., i * d : (i + 1) * d], h)
    ok = p["Attention/out/kernel"]
    out[f"{attn}/out/kernel"] = ok.reshape(*ok.shape[:-2], h, d // h, d)
    out[f"{attn}/out/bias"] = p["Attention/out/bias"]
    out |= {f"{mlp}/{k.removeprefix('MlpBlock/')}": v for k, v in p.items() if k.startswith("MlpBlock/")}
    return out


def _block_from_file(p: dict[str, np.ndarray], spec: config.ModelSpec, layout: str) -> dict[str, np.ndarray]:
    ln1, attn, ln2, mlp = BLOCK_NAMES[layout]
    d = spec.shape.width
    out = {f"LayerNorm_0/{k}": p[f"{ln1}/{k}"] for k in ("scale", "bias")}
    out |= {f"LayerNorm_1/{k}": p[f"{ln2}/{k}"] for k in ("scale", "bias")}
    q, k, v = (p[f"{attn}/{n}/kernel"] for n in ("query", "key", "value"))
    out["Attention/qkv/kernel"] = np.concatenate([x.reshape(*x.shape[:-2], d) for x in (q, k, v)], axis=-1)
    qb, kb, vb = (p[f"{attn}/{n}/bias"] for n in ("query", "key", "value"))
    out["Attention/qkv/bias"] = np.concatenate([x.reshape(*x.shape[:-2], d) for x in (qb, kb, vb)], axis=-1)
    ok = p[f"{attn}/out/kernel"]
    out["Attention/out/kernel"] = ok.reshape(*ok.shape[:-3], d, d)
    out["Attention/out/bias"] = p[f"{attn}/out/bias"]
    out |= {f"MlpBlock/{k.removeprefix(mlp + '/')}": a for k, a in p.items() if k.startswith(f"{mlp}/")}
    return out


def _blocks(flat: dict[str, np.ndarray], depth: int) -> list[dict[str, np.ndarray]]:
    """Per-layer dicts from `Transformer/encoderblock_{i}/...` or a stacked `Transformer/encoderblock/...`."""
    stacked = {k.removeprefix("Transformer/encoderblock/"): v for k, v in flat.items() if "/encoderblock/" in k}
    if stacked:
        return [{k: v[i] for k, v in stacked.items()} for i in range(depth)]
    pre = lambda i: f"Transformer/encoderblock_{i}/"
    return [{k.removeprefix(pre(i)): v for k, v in flat.items() if k.startswith(pre(i))} for i in range(depth)]


def _put_blocks(blocks: list[dict[str, np.ndarray]], scan: bool) -> dict[str, np.ndarray]:
    if scan:
        return {f"Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]}
    return {f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()}


def _top(flat: dict[str, np.ndarray], rename: dict[str, str]) -> dict[str, np.ndarray]:
    """Everything outside the blocks, the MAP head's prefix renamed."""
    out = {}
    for k, v in flat.items():
        if k.startswith("Transformer/encoderblock"):
            continue
        head, _, rest = k.partition("/")
        out[f"{rename.get(head, head)}/{rest}" if rest else k] = v
    return out


def to_file(
    params: dict[str, np.ndarray], spec: config.ModelSpec, layout: str = "big_vision", scan: bool | None = None
):
    """vitscale's parameters (flat, '/'-keyed numpy arrays) as the keys and arrays of a `layout` file;
    blocks stacked if `scan` (None: as the model has them)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    blocks = [_block_to_file(b, spec, layout) for b in _blocks(params, spec.shape.depth)]
    out = _top(params, {"MAPHead": MAP_KEY[layout]})
    if "pos_embedding" in out:
        pe = out.pop("pos_embedding")
        if layout == "vision_transformer" and "cls" in out:  # the class token's position, folded into cls
            pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
        out[POSEMB_KEY[layout]] = pe
    return out | _put_blocks(blocks, spec.scan if scan is None else scan)


def from_file(arrays: dict[str, np.ndarray], spec: config.ModelSpec) -> dict[str, np.ndarray]:
    """A file's arrays (all keys, any prefix) as vitscale's flat '/'-keyed parameters for `spec`."""
    prefix = find_prefix(arrays)
    own = {k.removeprefix(prefix): np.asarray(v, np.float32) for k, v in arrays.items() if k.startswith(prefix)}
    layout = detect_layout(own)
    blocks = [_block_from_file(b, spec, layout) for b in _blocks(own, spec.shape.depth)]
    out = _top(own, {MAP_KEY[layout]: "MAPHead"})
    pos = POSEMB_KEY[layout]
    if pos in own:
        pe = own[pos]
        if layout == "vision_transformer" and "cls" in own and not _square(pe.shape[1]):
            out["cls"] = own["cls"] + pe[:, :1]
            pe = pe[:, 1:]
        out["pos_embedding"] = pe
    out = {k: v for k, v in out.items() if not k.startswith("Transformer/posembed_input/")}
    return out | _put_blocks(blocks, spec.scan)


def load(path: str | Path, spec: config.ModelSpec, field: str = "pretrained") -> tuple[dict[str, np.ndarray], dict]:
    """A weights file checked against `spec`, as vitscale's flat parameters, and what was found in it."""
    file, found = check_file(path, spec, field)
    with np.load(file) as f:
        arrays = {k: f[k] for k in f.files}
    return from_file(arrays, spec), found


def save(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """An uncompressed .npz (what big_vision's `utils.load_params` and timm's `_load_weights` read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested params dict as '/'-keyed leaves."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out |= flatten(v, f"{prefix}{k}/")
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        *parents, leaf = k.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out
