"""Training-step throughput: vitscale vs timm (eager PyTorch) vs a textbook Flax ViT, on the CPU.

One full training step each (forward, backward, AdamW update; float32; the batch already in
memory; 10 classes, GAP head, learned position embedding, no class token, no dropout, no gradient
clipping) for three shapes, measured in one process:

  vitscale  vitscale.loop.make_trainer(ViT(...), optim.make_optimizer("adamw", mu_dtype="float32"))
            on the library's default mesh: data-parallel over all JAX devices, which on a CPU host
            are the cores split into devices by `import vitscale` (VITSCALE_CPU_DEVICES; the
            library's jitted step: explicit shardings, donated state, `backend.default_chains`
            gradient chains per device)
  timm      timm's VisionTransformer in eager PyTorch (global_pool="avg", class_token=False,
            fc_norm=False, torch.optim.AdamW, torch.set_num_threads(2))
  flax      the textbook linen ViT written below (nn.Conv patches, nn.MultiHeadDotProductAttention,
            nn.Dense MLP, optax.adamw, a jitted step without donation)

The process should run with jemalloc keeping freed pages, as vitscale's runs do
(vitscale/allocator.py; `make bench-throughput` starts it that way): the header says which
malloc the process has. It is the same for all three implementations; timm in a process of its own
with glibc's malloc was 4% faster on A and 3-5% slower on B and C (benchmarks/README.md).

One timing on a shared 2-core machine moves by 10-15% (far more when other jobs run), so the
implementations are interleaved: after a warm-up, each pass times every implementation for
--steps steps in turn (the first one rotating), then the f32 matmul peak; passes repeat. Reported
per shape: the median images/s of each implementation (min-max over passes), the median (min-max)
over passes of the per-pass ratios vitscale/timm and vitscale/flax (also by process CPU time for
the JAX ones, which other jobs on the machine disturb far less than wall time), and MFU:

  MFU = images/s x 3 x forward FLOPs per image / peak, forward FLOPs = 2 x the multiply-adds of
  every matmul and convolution, attention products included (`vitscale.models.flops.forward_flops`;
  element-wise work is not counted), peak = the best pass's rate of a jitted f32 2048x2048 jnp.dot
  (the faster of XLA's YNNPACK and Eigen dots).

The variants of the vitscale step that were tried here and rejected (model switches, XLA compile
options, device and chain counts, bf16) are recorded in benchmarks/README.md; their code is in git
history before commit d3c4afe.

Usage:
  .venv/bin/python benchmarks/train_throughput.py                 # A, B, C; vitscale, timm, flax
  .venv/bin/python benchmarks/train_throughput.py --quick         # shape A, 3 short passes
  .venv/bin/python benchmarks/train_throughput.py --shapes B --impls vitscale,flax --passes 9
  .venv/bin/python benchmarks/train_throughput.py --json out.json # also write every timing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

if __name__ == "__main__":
    # timm before vitscale: importing torchvision (as timm does) after TensorFlow (which
    # vitscale.train imports through vitscale.data) segfaults the process; the other order works.
    try:
        import timm.models.vision_transformer  # noqa: F401
    except ImportError:  # no 'bench' extra: timm is skipped
        pass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitscale import allocator, loop, optim, sharding
from vitscale.models import flops, vit

NUM_CLASSES = 10
LR = 1e-3
WEIGHT_DECAY = 1e-4  # AdamW everywhere; vitscale's wd is per-path (optim.DEFAULT_WD_RULES)


@dataclasses.dataclass(frozen=True)
class Shape:
    image: tuple[int, int, int]  # (H, W, C)
    patch: int
    width: int
    depth: int
    heads: int
    mlp: int
    batch: int

    def vit(self) -> vit.ViT:
        return vit.ViT(
            num_classes=NUM_CLASSES,
            patch_size=self.patch,
            width=self.width,
            depth=self.depth,
            mlp_dim=self.mlp,
            num_heads=self.heads,
            pool_type="gap",
            posemb="learn",
            dropout=0.0,
        )

    def forward_flops(self) -> int:
        return flops.forward_flops(self.vit(), self.image)


SHAPES: dict[str, Shape] = {
    "A": Shape((28, 28, 1), patch=4, width=64, depth=4, heads=4, mlp=256, batch=256),  # Pico/4
    "B": Shape((28, 28, 1), patch=4, width=192, depth=12, heads=3, mlp=768, batch=128),  # Ti/4
    "C": Shape((32, 32, 3), patch=4, width=384, depth=12, heads=6, mlp=1536, batch=64),  # S/4
}


def _batch(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((shape.batch, *shape.image), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, shape.batch).astype(np.int32)
    return images, labels


# A runner: `run(k)` does k training steps and returns only once their results exist.
Runner = Callable[[int], None]


# ----------------------------------------------------------------------------- vitscale
def vitscale_optimizer() -> optax.GradientTransformation:
    return optim.make_optimizer("adamw", LR, weight_decay=WEIGHT_DECAY, grad_clip_norm=None, mu_dtype="float32")


def make_vitscale(shape: Shape) -> Runner:
    """The library's own step, nothing swapped: loop.make_trainer (the backend's CPU kernels, its
    default gradient chains, explicit shardings, donated state) on the library's default mesh (all
    devices, data-parallel). `run.trainer` is the trainer, `run.state()` the current state."""
    mesh = sharding.make_mesh([-1, 1])
    trainer = loop.make_trainer(
        shape.vit(), vitscale_optimizer(), mesh, image_shape=shape.image, loss="softmax_xent", seed=0
    )
    images, labels = _batch(shape)
    batch = sharding.put_batch({"image": images, "label": labels}, mesh)
    state = trainer.init_fn()

    def run(k: int) -> None:
        nonlocal state
        out = None
        for _ in range(k):
            state, out = trainer.train_step(state, batch)
        jax.block_until_ready((state, out))

    run.trainer = trainer
    run.state = lambda: state
    return run


# ----------------------------------------------------------------------------- textbook Flax ViT
class FlaxBlock(nn.Module):
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
        y = nn.LayerNorm()(x)
        y = nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp)(y)))
        return x + y


class FlaxViT(nn.Module):
    """The textbook linen ViT: conv patches, learned posemb, pre-LN blocks, GAP, linear head."""

    patch: int
    width: int
    depth: int
    heads: int
    mlp: int
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, images):
        p = self.patch
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID")(images)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w, d))
        for _ in range(self.depth):
            x = FlaxBlock(self.heads, self.mlp)(x)
        x = nn.LayerNorm()(x).mean(axis=1)
        return nn.Dense(self.num_classes)(x)


def make_flax(shape: Shape) -> Runner:
    model = FlaxViT(shape.patch, shape.width, shape.depth, shape.heads, shape.mlp)
    images, labels = (jnp.asarray(a) for a in _batch(shape))
    params = model.init(jax.random.key(0), images[:1])["params"]
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def run(k: int) -> None:
        nonlocal params, opt_state
        loss = None
        for _ in range(k):
            params, opt_state, loss = step(params, opt_state, images, labels)
        jax.block_until_ready((params, opt_state, loss))

    return run


# ----------------------------------------------------------------------------- timm (eager PyTorch)
def timm_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "timm"))


def make_timm(shape: Shape) -> Runner:
    if "torchvision" not in sys.modules and "tensorflow" in sys.modules:
        raise RuntimeError(
            "import timm before vitscale (torchvision imported after TensorFlow segfaults); run this file as a script"
        )
    import torch
    import torch.nn.functional as F
    from timm.models.vision_transformer import VisionTransformer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    h, w, c = shape.image
    model = VisionTransformer(
        img_size=(h, w),
        patch_size=shape.patch,
        in_chans=c,
        num_classes=NUM_CLASSES,
        global_pool="avg",
        class_token=False,
        fc_norm=False,  # final LayerNorm before the mean, as vitscale's GAP head
        embed_dim=shape.width,
        depth=shape.depth,
        num_heads=shape.heads,
        mlp_ratio=shape.mlp / shape.width,
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    images, labels = _batch(shape)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NCHW
    y = torch.from_numpy(labels.astype(np.int64))

    def run(k: int) -> None:
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        loss.item()

    return run


# ----------------------------------------------------------------------------- the matmul peak
MATMUL_N = 2048
# XLA:CPU hands dots to YNNPACK by default; this per-jit option turns that off (Eigen dots).
YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


def make_matmul(n: int = MATMUL_N, compiler_options: dict[str, Any] | None = None) -> tuple[Runner, float]:
    """k f32 [n, n] x [n, n] products (chained, so none is skipped); returns (runner, FLOPs per call)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32) / math.sqrt(n)
    dot = jax.jit(jnp.dot).lower(a, b).compile(compiler_options=compiler_options)

    def run(k: int) -> None:
        x = a
        for _ in range(k):
            x = dot(x, b)
        jax.block_until_ready(x)

    return run, 2.0 * n**3


BASELINES: dict[str, Callable[[Shape], Runner]] = {"vitscale": make_vitscale, "timm": make_timm, "flax": make_flax}


# ----------------------------------------------------------------------------- measuring
def timed(run: Runner, k: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of k steps."""
    t0, c0 = time.perf_counter(), time.process_time()
    run(k)
    return time.perf_counter() - t0, time.process_time() - c0


def measure_shape(
    name: str,
    shape: Shape,
    impls: list[str],
    *,
    passes: int,
    steps: int,
    warmup: int,
    log=print,
    matmul_n: int = MATMUL_N,
) -> dict[str, Any]:
    """Round-robin: each pass times every implementation for `steps` steps; returns all timings."""
    runners: dict[str, Runner] = {}
    for impl in impls:
        t0 = time.perf_counter()
        runners[impl] = BASELINES[impl](shape)
        runners[impl](warmup)  # compile + warm caches
        log(f"  [{name}] {impl}: built and warmed up in {time.perf_counter() - t0:.1f} s")
    # The peak: XLA's default dot (YNNPACK) and its Eigen dot, the faster of the two in each pass.
    mms = [make_matmul(matmul_n, compiler_options=o) for o in (None, YNN_OFF)]
    for mm, _ in mms:
        mm(1)
    seconds: dict[str, list[float]] = {impl: [] for impl in impls}
    cpu: dict[str, list[float]] = {impl: [] for impl in impls}
    peak: list[float] = []
    for p in range(passes):
        order = impls[p % len(impls) :] + impls[: p % len(impls)]  # rotate who goes first
        for impl in order:
            wall, c = timed(runners[impl], steps)
            seconds[impl].append(wall)
            cpu[impl].append(c)
        peak.append(max(2 * f / timed(mm, 2)[0] / 1e9 for mm, f in mms))
        log(
            f"  [{name}] pass {p + 1}/{passes}: "
            + ", ".join(f"{impl} {steps * shape.batch / seconds[impl][-1]:.0f}" for impl in impls)
            + f" img/s; "
            f"matmul {peak[-1]:.0f} GFLOP/s"
        )
    del runners
    return {
        "shape": dataclasses.asdict(shape),
        "steps": steps,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "matmul_gflops": peak,
        "train_flops_per_image": 3 * shape.forward_flops(),
    }


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def summarize(name: str, r: dict[str, Any], reference: str = "vitscale") -> dict[str, Any]:
    """Per implementation: median images/s (and min-max over passes), MFU, and the per-pass ratio
    reference/impl ("vitscale/timm") by wall time and (not for timm) by process CPU time."""
    batch, steps = r["shape"]["batch"], r["steps"]
    ips = {impl: [steps * batch / s for s in ss] for impl, ss in r["seconds"].items()}
    cpu = r.get("cpu_seconds", {})
    peak = max(r["matmul_gflops"])  # the best pass: the least disturbed by other work
    out = {"shape": name, "peak_gflops": peak, "impls": {}}
    for impl, xs in ips.items():
        med = statistics.median(xs)
        row = {
            "images_per_s": med,
            "min": min(xs),
            "max": max(xs),
            "achieved_gflops": med * r["train_flops_per_image"] / 1e9,
            "mfu": med * r["train_flops_per_image"] / 1e9 / peak,
        }
        if reference in ips and impl != reference:
            row["ref_over_impl"] = _spread([a / b for a, b in zip(ips[reference], xs)])
            # Not for timm: torch's OpenMP threads spin while they wait, so its CPU time overstates work.
            if impl != "timm" and impl in cpu and reference in cpu:
                row["ref_over_impl_cpu"] = _spread([b / a for a, b in zip(cpu[reference], cpu[impl])])
        out["impls"][impl] = row
    return out


def _fmt(r: dict[str, float] | None) -> str:
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" if r else ""


def print_table(summaries: list[dict[str, Any]], reference: str = "vitscale", file=sys.stdout) -> None:
    print(
        f"\n| shape | impl | images/s median (min-max) | MFU | {reference}/impl per pass: median (min-max) "
        "| same by CPU time |",
        file=file,
    )
    print("|---|---|---:|---:|---|---|", file=file)
    for s in summaries:
        for impl, row in s["impls"].items():
            print(
                f"| {s['shape']} | {impl} | {row['images_per_s']:.0f} ({row['min']:.0f}-{row['max']:.0f}) | "
                f"{100 * row['mfu']:.1f}% | {_fmt(row.get('ref_over_impl'))} | "
                f"{_fmt(row.get('ref_over_impl_cpu'))} |",
                file=file,
            )
    print(
        "\nMFU = images/s x 3 x forward FLOPs per image (vitscale.models.flops.forward_flops) / the f32 matmul peak "
        f"(jnp.dot {MATMUL_N}x{MATMUL_N}, best of YNNPACK and Eigen, best pass of the same run): "
        + ", ".join(f"{s['shape']} {s['peak_gflops']:.0f} GFLOP/s" for s in summaries),
        file=file,
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="A,B,C", help="comma-separated, from " + ",".join(SHAPES))
    ap.add_argument(
        "--impls",
        default="vitscale,timm,flax",
        help="comma-separated, from " + ",".join(BASELINES) + " (timm needs the 'bench' extra)",
    )
    ap.add_argument("--passes", type=int, default=7, help="round-robin passes (default 7)")
    ap.add_argument("--steps", type=int, default=2, help="steps per implementation per pass (default 2)")
    ap.add_argument("--warmup", type=int, default=2, help="steps run once before timing (default 2)")
    ap.add_argument("--quick", action="store_true", help="shape A, 3 passes of 2 steps (a smoke run)")
    ap.add_argument("--json", help="also write the timings and summaries to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.passes, args.steps, args.warmup = "A", 3, 2, 2
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [s for s in shapes if s not in SHAPES] + [i for i in impls if i not in BASELINES]
    if unknown:
        ap.error(f"unknown shapes/impls: {unknown} (shapes: {', '.join(SHAPES)}; impls: {', '.join(BASELINES)})")
    if "timm" in impls and not timm_available():
        print("timm/torch not installed (pip install -e '.[bench]'): skipping timm", file=sys.stderr)
        impls.remove("timm")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{len(jax.devices())}, "
        f"{os.cpu_count()} CPUs, malloc: {allocator.current()} (every implementation in this process); "
        f"passes {args.passes} x {args.steps} steps (warm-up {args.warmup})"
    )
    if allocator.current() != "jemalloc":
        print(
            "note: vitscale runs with jemalloc (`make bench-throughput`, or `python -m vitscale.allocator python "
            f"{sys.argv[0]}`); this process has the C library's malloc",
            file=sys.stderr,
        )
    results, summaries = {}, []
    for name in shapes:
        shape = SHAPES[name]
        print(f"shape {name}: {shape} ({3 * shape.forward_flops() / 1e6:.1f} MFLOP/image per step)")
        results[name] = measure_shape(name, shape, impls, passes=args.passes, steps=args.steps, warmup=args.warmup)
        summaries.append(summarize(name, results[name]))
    print_table(summaries)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"argv": sys.argv[1:], "allocator": allocator.current(), "results": results, "summaries": summaries},
                f,
                indent=1,
            )
    return summaries


if __name__ == "__main__":
    main()
