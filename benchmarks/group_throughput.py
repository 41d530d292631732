"""Runs trained as one program (vitscale.group) against the same runs one after another.

For each variant (Atto/7, Femto/7, Pico/7 at batch 64 on 28x28x1 images, 10 classes, the library's
default optimizer and CPU kernels), on the default mesh:

  alone   one run's step (build.trainer: the step `vitscale run` compiles), the batch in memory;
          n runs one after another take n times as long (their programs differ only in constants)
  group n the group's step for n copies (group.make_group_trainer: on a CPU each copy's gradient
          side by side in one program, on GPU/TPU one vmap; the copies' optimizer update vmapped),
          n = 4 and 8, each copy with its own lr, seed and batch
  --vmap  also each group with its gradients vmapped on this CPU (VITSCALE_GROUP=vmap), in the same passes

Synthetic batches of the Fashion-MNIST shape (a throughput benchmark; the input pipeline is not
timed). One timing on a shared 2-core machine moves by 10-15%, so the programs are interleaved:
after a warm-up, each pass times every program for --steps steps in turn (the first one rotating);
reported per variant: the median images/s summed over copies, the median of the per-pass ratios
group / alone (both n runs' worth of images), each copy's wall time for a --run-steps run (in a
group every copy ends when the group does; one after another the last ends n times one run's time),
and MFU, per copy and summed (vitscale.perf: 3 x forward matmul FLOPs per image x images/s / peak).

Usage:
  .venv/bin/python -m vitscale.allocator .venv/bin/python benchmarks/group_throughput.py --json g.json --png g.png
  .venv/bin/python benchmarks/group_throughput.py --variants Atto/7 --copies 4 --passes 1 --steps 2   # smoke
  .venv/bin/python benchmarks/group_throughput.py --redraw g.json --png g.png                          # the figure
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitscale import build, config, group, perf, sharding

NUM_CLASSES = 10
BATCH = 64


def cfg_of(variant: str, i: int, batch: int) -> config.PretrainConfig:
    """Copy i of a group: the variant at `batch`, its own lr and seed (the keys a search varies)."""
    return config.validate(
        config.PretrainConfig, dict(variant=variant, batch_size=batch, lr=1e-3 * (1 + i), seed=i, warmup_steps=10)
    )


def _batch(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch, 28, 28, 1), dtype=np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
    }


def make_alone(variant: str, batch: int, mesh):
    """k steps of one run alone; returns (runner, trainer)."""
    trainer = build.trainer(cfg_of(variant, 0, batch), mesh, NUM_CLASSES)
    data = sharding.put_batch(_batch(batch, 0), mesh)
    state = trainer.init_fn()

    def run(k: int) -> None:
        nonlocal state
        for _ in range(k):
            state, out = trainer.train_step(state, data)
        jax.block_until_ready((state, out))

    return run, trainer


def make_group(variant: str, batch: int, copies: int, mesh):
    """k steps of a group of `copies` runs as one program."""
    cfgs = [cfg_of(variant, i, batch) for i in range(copies)]
    g = group.make_group_trainer(cfgs, mesh, NUM_CLASSES)
    parts = [_batch(batch, i) for i in range(copies)]
    data = jax.device_put({k: np.stack([p[k] for p in parts]) for k in parts[0]}, g.batch_sharding)
    state = g.stack(tuple(t.init_fn() for t in g.trainers))

    def run(k: int) -> None:
        nonlocal state
        for _ in range(k):
            state, out = g.step(state, data)
        jax.block_until_ready((state, out))

    return run


def make_vmapped(variant: str, batch: int, copies: int, mesh):
    """make_group with the copies' gradients in one vmap (the GPU/TPU way) also on a CPU."""
    before = os.environ.get("VITSCALE_GROUP")
    os.environ["VITSCALE_GROUP"] = "vmap"  # read when the group is built (backend.copies_side_by_side)
    try:
        return make_group(variant, batch, copies, mesh)
    finally:
        if before is None:
            del os.environ["VITSCALE_GROUP"]
        else:
            os.environ["VITSCALE_GROUP"] = before


def measure(
    variant: str, copies: list[int], *, batch: int, passes: int, steps: int, warmup: int, vmap: bool, log=print
) -> dict:
    """Interleaved passes: seconds per step of the alone program and of each group (and each vmapped)."""
    mesh = sharding.make_mesh([-1, 1])
    alone, trainer = make_alone(variant, batch, mesh)
    runners = {"alone": alone, **{f"group{n}": make_group(variant, batch, n, mesh) for n in copies}}
    if vmap:
        runners |= {f"group{n}-vmap": make_vmapped(variant, batch, n, mesh) for n in copies}
    for name, run in runners.items():
        t0 = time.perf_counter()
        run(warmup)
        log(f"  [{variant}] {name}: compiled and warmed up in {time.perf_counter() - t0:.1f} s")
    seconds: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for p in range(passes):
        for name in names[p % len(names) :] + names[: p % len(names)]:
            t0 = time.perf_counter()
            runners[name](steps)
            seconds[name].append((time.perf_counter() - t0) / steps)
    peak = perf.device_peak(jax.devices()[0], perf.precision_of(jnp.float32))
    return {"seconds_per_step": seconds, "forward_flops": trainer.forward_flops, "peak": peak.flops_per_s}


def summarize(variant: str, m: dict, batch: int, run_steps: int) -> dict[str, Any]:
    """Images/s summed over copies, ratios to one after another, wall time and MFU per copy."""
    alone = m["seconds_per_step"]["alone"]
    mfu = lambda images_per_s: 3.0 * m["forward_flops"] * images_per_s / m["peak"] / jax.device_count()
    rows = {
        "alone": {
            "images_per_s": batch / statistics.median(alone),
            "mfu_per_copy": mfu(batch / statistics.median(alone)),
        }
    }
    rows["alone"]["run_wall_s"] = statistics.median(alone) * run_steps
    for name, sec in m["seconds_per_step"].items():
        if name == "alone":
            continue
        n = int(name.removeprefix("group").removesuffix("-vmap"))
        per_copy = batch / statistics.median(sec)
        rows[name] = {
            "images_per_s": n * per_copy,
            "ratio": statistics.median(n * a / s for a, s in zip(alone, sec)),  # per pass: n runs' images
            "ratio_min_max": [min(n * a / s for a, s in zip(alone, sec)), max(n * a / s for a, s in zip(alone, sec))],
            "mfu_per_copy": mfu(per_copy),
            "mfu_total": n * mfu(per_copy),
            "copy_wall_s": statistics.median(sec) * run_steps,  # every copy of the group
            "sequential_last_wall_s": n * rows["alone"]["run_wall_s"],  # the n-th run one after another
        }
    return {"variant": variant, "batch": batch, "run_steps": run_steps, **m, "rows": rows}


def table(results: list[dict]) -> str:
    lines = [
        "| variant | program | images/s (all copies) | vs one after another | MFU per copy | MFU total "
        f"| each copy's wall, {results[0]['run_steps']} steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a = r["rows"]["alone"]
        lines.append(
            f"| {r['variant']} | alone | {a['images_per_s']:.0f} | 1 | {a['mfu_per_copy']:.1%} "
            f"| {a['mfu_per_copy']:.1%} | {a['run_wall_s']:.0f} s |"
        )
        for name, g in r["rows"].items():
            if name == "alone":
                continue
            n = name.removeprefix("group").replace("-vmap", ", vmapped")
            lines.append(
                f"| {r['variant']} | group of {n} | {g['images_per_s']:.0f} | {g['ratio']:.2f}x "
                f"({g['ratio_min_max'][0]:.2f}-{g['ratio_min_max'][1]:.2f}) | {g['mfu_per_copy']:.1%} | "
                f"{g['mfu_total']:.1%} | {g['copy_wall_s']:.0f} s (alone, one after another: the last at "
                f"{g['sequential_last_wall_s']:.0f} s) |"
            )
    return "\n".join(lines)


def figure(results: list[dict], path: Path) -> None:
    """Images/s summed over copies per variant: alone, group of 4, group of 8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    programs = list(results[0]["rows"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(programs)
    for k, name in enumerate(programs):
        values = [r["rows"][name]["images_per_s"] for r in results]
        bars = ax.bar(
            np.arange(len(results)) + k * width,
            values,
            width,
            label=name.replace("group", "group of ").replace("-vmap", ", vmapped"),
        )
        for bar, r in zip(bars, results):
            ratio = r["rows"][name].get("ratio")
            if ratio:
                ax.annotate(
                    f"{ratio:.2f}x",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax.set_xticks(np.arange(len(results)) + width * (len(programs) - 1) / 2, [r["variant"] for r in results])
    ax.set_ylabel("training images/s, summed over copies")
    ax.set_title(f"Runs trained as one program (batch {results[0]['batch']}, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="Atto/7,Femto/7,Pico/7")
    ap.add_argument("--copies", default="4,8", help="group sizes, comma-separated")
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="steps per program per pass")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--run-steps", type=int, default=1000, help="the run length each copy's wall time is given for")
    ap.add_argument("--vmap", action="store_true", help="also time each group vmapped (the GPU/TPU way) on this CPU")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--redraw", type=Path, help="draw --png from a --json of an earlier run (no timing)")
    args = ap.parse_args()
    if args.redraw:
        figure(json.loads(args.redraw.read_text()), args.png)
        return
    copies = [int(c) for c in args.copies.split(",")]
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    results = []
    for variant in args.variants.split(","):
        m = measure(
            variant, copies, batch=args.batch, passes=args.passes, steps=args.steps, warmup=args.warmup, vmap=args.vmap
        )
        results.append(summarize(variant, m, args.batch, args.run_steps))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.png:
        figure(results, args.png)


if __name__ == "__main__":
    main()
