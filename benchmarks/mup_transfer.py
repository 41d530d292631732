"""Learning-rate transfer across width: the best rate on a 2x grid at four widths spanning 8x, under the
standard parametrization and under muP (vitscale.mup), on a fixed Fashion-MNIST task.

Each (parametrization, width) trains one copy per rate as one program (jax.vmap over the rate; every copy
starts from the same initialisation and sees the same batches), with the library's model and optimizer
(build.model, build.optimizer: AdamW, the paper's weight-decay rules, cosine schedule with warmup).
The score is the loss on 2,000 held-out training images (never the test split).

    .venv/bin/python benchmarks/mup_transfer.py [--steps 300] [--json out.json] [--html fig.html]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vitscale import build, config
from vitscale.data import sources

WIDTHS = (16, 32, 64, 128)  # 8x, the CPU ladder's widths (Atto 32 .. Micro 128) and one below
LRS = tuple(2.0**k for k in range(-12, -1))  # 2.4e-4 .. 0.25, a 2x grid
BASE_WIDTH = 16


def cfg_for(width: int, parametrization: str, steps: int) -> config.PretrainConfig:
    """A 2-layer ViT of `width` (head dimension 8, MLP 4x) on 28 px Fashion-MNIST, patch 7."""
    return config.PretrainConfig(
        variant="Atto/7",
        width=width,
        depth=2,
        num_heads=width // 8,
        mlp_dim=4 * width,
        parametrization=parametrization,
        base_width=BASE_WIDTH if parametrization == "mup" else None,
        lr=1.0,  # the schedule's shape; each copy multiplies its update by its own rate
        total_steps=steps,
        warmup_steps=steps // 10,
    )


def load(n_train: int, n_val: int) -> tuple[np.ndarray, ...]:
    """The first n_train training images and n_val held-out ones from the end of the training split."""
    split = sources.load_split("fashion_mnist", "train")
    x = split.images.astype(np.float32) / 127.5 - 1.0
    return x[:n_train], split.labels[:n_train], x[-n_val:], split.labels[-n_val:]


def sweep_rates(cfg: config.PretrainConfig, data, batch: int, seed: int = 0) -> np.ndarray:
    """Held-out loss after training, one per rate in LRS (all rates as one vmapped program)."""
    x, y, xv, yv = (jnp.asarray(a) for a in data)
    model = build.model(cfg, 10)
    tx = build.optimizer(cfg, build.schedule(cfg))
    params = model.init(jax.random.key(seed), x[:1])["params"]
    lrs = jnp.asarray(LRS, jnp.float32)
    stack = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (len(LRS), *a.shape)), t)
    p, s = stack(params), stack(tx.init(params))

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb)[0], yb).mean()

    def step_one(p, s, lr, xb, yb):
        g = jax.grad(loss)(p, xb, yb)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, jax.tree.map(lambda a: a * lr, u)), s

    step = jax.jit(jax.vmap(step_one, in_axes=(0, 0, 0, None, None)), donate_argnums=(0, 1))
    order = np.random.default_rng(seed).permutation(np.arange(cfg.total_steps * batch) % len(x))
    for t in range(cfg.total_steps):
        idx = order[t * batch : (t + 1) * batch]
        p, s = step(p, s, lrs, x[idx], y[idx])
    evaluate = jax.jit(jax.vmap(loss, in_axes=(0, None, None)))
    out = np.asarray(evaluate(p, xv, yv))
    return np.where(np.isfinite(out), out, np.inf)


def figure(results: dict) -> go.Figure:
    """Held-out loss against rate, one curve per width, one panel per parametrization (the U-curves)."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("standard", f"muP (base width {BASE_WIDTH})"), shared_yaxes=True
    )
    for col, param in enumerate(("standard", "mup"), start=1):
        for w in WIDTHS:
            losses = np.asarray(results[param][str(w)])
            color = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")[WIDTHS.index(w) % 4]
            trace = go.Scatter(
                x=LRS, y=np.minimum(losses, 3.0), mode="lines+markers", name=f"width {w}", line_color=color
            )
            fig.add_trace(trace.update(legendgroup=str(w), showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(type="log", title_text="learning rate", row=1, col=col)
    fig.update_yaxes(title_text="held-out loss (capped at 3)", row=1, col=1)
    fig.update_layout(width=1000, height=420, title="Best learning rate across widths (2-layer ViT, Fashion-MNIST)")
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--html", type=Path)
    ap.add_argument("--redraw", type=Path, help="draw --html from a --json of an earlier run (no training)")
    args = ap.parse_args()
    if args.redraw:
        figure(json.loads(args.redraw.read_text())).write_html(args.html, include_plotlyjs=True)
        return
    data = load(args.train, 2000)
    results: dict = {"lrs": list(LRS), "widths": list(WIDTHS), "steps": args.steps, "batch": args.batch}
    for param in ("standard", "mup"):
        results[param] = {}
        for w in WIDTHS:
            t0 = time.time()
            losses = sweep_rates(cfg_for(w, param, args.steps), data, args.batch)
            results[param][str(w)] = [float(v) for v in losses]
            best = int(np.argmin(losses))
            print(f"{param:8s} width {w:3d}: best lr 2^{int(np.log2(LRS[best]))} = {LRS[best]:.2e}, held-out loss "
                  f"{losses[best]:.4f} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    for param in ("standard", "mup"):
        best = [int(np.argmin(results[param][str(w)])) for w in WIDTHS]
        results[f"{param}_best_index"] = best
        print(f"{param}: best grid index per width {best}, spread {max(best) - min(best)} grid points")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.html:
        figure(results).write_html(args.html, include_plotlyjs=True)


if __name__ == "__main__":
    main()
