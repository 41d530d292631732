"""Does the input pipeline keep up with the training step?

For each case (the demo's settings, a 7x7-patch model, and the throughput benchmark's shapes A, B, C
on real Fashion-MNIST images) this times, interleaved over passes:

  pipeline  `vitscale.data.pipeline.train_batches` alone (gather, preprocess, augmentation, to numpy), img/s
  step      the library's jitted training step on one batch already on the device, img/s
  fed       the training loop as `vitscale.train` runs it: next batch from the pipeline, put on the
            device, step (asynchronous dispatch lets the pipeline work while the step runs), img/s

and prints the medians, pipeline/step (the issue's target: >= 5x) and fed/step (what the pipeline
costs a real run: 1.00 = nothing). The pipeline and the step share the machine's cores, so "fed"
is the number that matters on a small machine.

Usage:
  .venv/bin/python benchmarks/input_pipeline.py                  # demo, pico7, A, B; 3 passes (~6 min)
  .venv/bin/python benchmarks/input_pipeline.py --cases demo,A --passes 3 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax

from vitscale import build, loop, sharding
from vitscale import config as config_lib
from vitscale.data import pipeline, sources


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    variant: str
    image_size: int
    channels: int
    batch: int
    crop_padding: int
    flip: bool
    note: str


CASES = {
    c.name: c
    for c in [
        Case("demo", "Pico/4", 28, 1, 128, 2, True, "parameters/pretrain/demo.yaml and fmnist_90.yaml"),
        Case("pico7", "Pico/7", 28, 1, 128, 0, False, "Pico/7 without augmentation (rsqrt_cooldowns.yaml)"),
        Case("A", "Pico/4", 28, 1, 256, 2, True, "throughput shape A, with crop + flip"),
        Case("B", "Ti/4", 28, 1, 128, 2, True, "throughput shape B, with crop + flip"),
        Case("C", "S/4", 32, 3, 64, 2, True, "throughput shape C: 28 px grey resized to 32 px RGB"),
    ]
}


def make_case(case: Case, split: sources.Split, steps: int):
    """Timers for one case, built the way `vitscale.train.run` builds a run (model, optimizer,
    mesh over all devices, pipeline) from a validated PretrainConfig."""
    cfg = config_lib.validate(
        config_lib.PretrainConfig,
        {
            "name": f"bench_{case.name}",
            "dataset": "fashion_mnist",
            "variant": case.variant,
            "image_size": case.image_size,
            "channels": case.channels,
            "batch_size": case.batch,
            "crop_padding": case.crop_padding,
            "flip": case.flip,
            "total_steps": 10_000,
            "optimizer": "adamw",
            "lr": 1e-3,
            "wd_rules": [["kernel$", 0.05]],
        },
    )
    mesh = sharding.make_mesh(cfg.mesh)
    trainer = loop.make_trainer(
        build.model(cfg, split.num_classes),
        build.optimizer(cfg, build.schedule(cfg)),
        mesh,
        image_shape=(cfg.image_size, cfg.image_size, cfg.channels),
        loss=cfg.loss,
    )
    pipe = build.pipeline(cfg)
    batches = pipeline.train_batches(split, pipe, global_batch=case.batch, seed=0)
    state = trainer.init_fn()
    fixed = sharding.put_batch(next(batches), mesh)
    state, out = trainer.train_step(state, fixed)  # compile
    jax.block_until_ready(out)

    def time_pipeline() -> float:
        # Many more batches than the prefetch buffer holds, so its head start does not count.
        n = max(200, 20 * steps)
        t0 = time.perf_counter()
        for _ in range(n):
            next(batches)
        return n * case.batch / (time.perf_counter() - t0)

    def time_step() -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(steps):
            state, o = trainer.train_step(state, fixed)
        jax.block_until_ready((state, o))
        return steps * case.batch / (time.perf_counter() - t0)

    def time_fed() -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(steps):
            state, o = trainer.train_step(state, sharding.put_batch(next(batches), mesh))
        jax.block_until_ready((state, o))
        return steps * case.batch / (time.perf_counter() - t0)

    return {"pipeline": time_pipeline, "step": time_step, "fed": time_fed}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cases",
        default="demo,pico7,A,B",
        help="comma-separated: " + ",".join(CASES) + " (C takes ~10 min: its step runs at ~17 img/s)",
    )
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="steps (batches) per timing")
    ap.add_argument("--json", help="also write the timings here")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; accepted: {', '.join(CASES)}")

    split = sources.load_split("fashion_mnist", "train")
    results = {}
    for name in names:
        case = CASES[name]
        timers = make_case(case, split, args.steps)
        for f in timers.values():  # warm-up (tf.data autotuning, first device transfers)
            f()
        rates = {k: [] for k in timers}
        for p in range(args.passes):
            order = list(timers)[p % 3 :] + list(timers)[: p % 3]
            for k in order:
                rates[k].append(timers[k]())
        med = {k: statistics.median(v) for k, v in rates.items()}
        results[name] = {
            "case": dataclasses.asdict(case),
            "rates": rates,
            "median": med,
            "pipeline_over_step": [a / b for a, b in zip(rates["pipeline"], rates["step"])],
            "fed_over_step": [a / b for a, b in zip(rates["fed"], rates["step"])],
        }
        print(
            f"{name}: pipeline {med['pipeline']:.0f} img/s, step {med['step']:.0f}, fed {med['fed']:.0f}",
            file=sys.stderr,
            flush=True,
        )

    print(
        f"\nInput pipeline vs training step (jax {jax.__version__}, {jax.device_count()} device(s), "
        f"median of {args.passes} interleaved passes of {args.steps} batches)\n"
    )
    print(
        "| case | model | batch | augmentation | pipeline img/s | step img/s | fed img/s | pipeline / step "
        "| fed / step |"
    )
    print("|---|---|---:|---|---:|---:|---:|---|---|")
    for name, r in results.items():
        c, m = r["case"], r["median"]
        aug = (f"crop pad {c['crop_padding']}" if c["crop_padding"] else "") + (" + flip" if c["flip"] else "")
        ps, fs = r["pipeline_over_step"], r["fed_over_step"]
        print(
            f"| {name} | {c['variant']} {c['image_size']}x{c['image_size']}x{c['channels']} | {c['batch']} | "
            f"{aug.strip(' +') or 'none'} | {m['pipeline']:.0f} | {m['step']:.0f} | {m['fed']:.0f} | "
            f"{statistics.median(ps):.1f}x ({min(ps):.1f}-{max(ps):.1f}) | "
            f"{statistics.median(fs):.2f} ({min(fs):.2f}-{max(fs):.2f}) |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
