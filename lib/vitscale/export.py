"""Export: a pretraining run's newest checkpoint as a `.npz` that big_vision's and timm's loaders read.

`vitscale export outputs/<run> [--format big_vision|vision_transformer] [--out file.npz]` writes
`<run>/export/<format>_step<N>.npz` (names and shapes: vitscale.pretrained) and beside it
`<format>_step<N>.yaml`: the `pretrained` and `pretrained_model` lines a transfer parameter file
needs to read it back (README "Released weights").
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vitscale import config, mup, pretrained, runs


def check(cfg: config.PretrainConfig, layout: str) -> None:
    """What `layout` cannot hold of the model (vision_transformer: learned position embeddings only, no MAP head)."""
    problems = []
    if layout not in pretrained.LAYOUTS:
        problems.append(config.Problem("--format", f"{layout!r} is not one of {list(pretrained.LAYOUTS)}"))
    elif layout == "vision_transformer":
        if cfg.pool_type == "map":
            problems.append(config.Problem("--format", "vision_transformer has no MAP head; use big_vision"))
        if cfg.posemb != "learn":
            problems.append(config.Problem("--format", "vision_transformer has learned position embeddings only"))
    if problems:
        raise config.ConfigError(problems)


def run(run_dir: str | Path, out: str | Path | None = None, layout: str = "big_vision") -> Path:
    """Write the newest readable checkpoint of `run_dir` as a `layout` .npz; returns its path."""
    run = runs.find_run(run_dir, "target")
    check(pretrained.read_pretrain_config(run), layout)
    run, cfg, params, step = pretrained.read_run(run)  # no optimizer, no dataset: the checkpoint's params
    spec = cfg.model_spec()
    # A muP model's multipliers go into the weights: the file holds a standard ViT (vitscale.mup.fold).
    flat = mup.fold(pretrained.flatten(params), mup.multipliers(spec), spec.shape.width)
    spec = spec.model_copy(
        update=dict(parametrization="standard", base_width=None, base_head_dim=None, base_depth=None)
    )
    path = Path(out) if out else run / "export" / f"{layout}_step{step}.npz"
    pretrained.save(path, pretrained.to_file(flat, spec, layout))
    lines = {
        "pretrained": str(path.resolve()),
        "pretrained_model": spec.changed(),  # config.ModelSpec: the fields that differ from the defaults
        # (not parameters) where the weights come from
        "exported_from": {"run": str(run), "step": step, "layout": layout},
    }
    path.with_suffix(".yaml").write_text(yaml.safe_dump(lines, sort_keys=False))
    return path
