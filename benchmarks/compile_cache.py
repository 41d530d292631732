"""What JAX's persistent compilation cache saves a run: first-step time with and without it.

Every run of a sweep is a fresh kernel (papermill), so each one compiles its training and
evaluation steps again, though runs that share a model shape compile the same programs.
`vitscale run` and `vitscale sweep` point JAX_COMPILATION_CACHE_DIR at outputs/.jax_cache (unless it
is set) so that only the first run of a shape pays. This script measures, for a few model shapes,
in fresh processes (as a sweep starts them):

  off    no persistent cache
  cold   an empty cache directory (compiles and writes the cache)
  warm   the same directory again (reads it)

each timing: building the state (init), the first training step (compile + run), the first
evaluation step (compile + run), and a second training step (run only, for scale).

Usage:
  .venv/bin/python benchmarks/compile_cache.py                 # demo, B, C; 3 repeats
  .venv/bin/python benchmarks/compile_cache.py --cases demo --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CASES = {  # name: (variant, image_size, channels, batch)
    "demo": ("Pico/4", 28, 1, 128),
    "pico7": ("Pico/7", 28, 1, 128),
    "B": ("Ti/4", 28, 1, 128),
    "C": ("S/4", 32, 3, 64),
}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, numpy as np
from vitscale import build, config as config_lib, loop, sharding
t_import = time.perf_counter() - t0
variant, size, channels, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = config_lib.validate(config_lib.PretrainConfig, {
    "name": "bench", "dataset": "fashion_mnist", "variant": variant, "image_size": size, "channels": channels,
    "batch_size": batch, "total_steps": 1000, "optimizer": "adamw", "lr": 1e-3})
mesh = sharding.make_mesh(cfg.mesh)
t = time.perf_counter()
trainer = loop.make_trainer(build.model(cfg, 10), build.optimizer(cfg, build.schedule(cfg)), mesh,
                             image_shape=(size, size, channels), loss=cfg.loss)
state = trainer.init_fn()
jax.block_until_ready(state)
t_init = time.perf_counter() - t
rng = np.random.default_rng(0)
b = sharding.put_batch({"image": rng.normal(size=(batch, size, size, channels)).astype(np.float32),
                        "label": rng.integers(0, 10, batch).astype(np.int32), "mask": np.ones(batch, bool)}, mesh)
t = time.perf_counter(); state, out = trainer.train_step(state, b); jax.block_until_ready(out)
t_first = time.perf_counter() - t
t = time.perf_counter(); ev = trainer.eval_step(state.params, b); jax.block_until_ready(ev)
t_eval = time.perf_counter() - t
t = time.perf_counter(); state, out = trainer.train_step(state, b); jax.block_until_ready(out)
t_second = time.perf_counter() - t
print(json.dumps({"import": t_import, "init": t_init, "first_step": t_first, "first_eval": t_eval,
                  "second_step": t_second}))
"""


def child(case: str, cache_dir: str | None) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache_dir:  # as notebooks.compile_cache_env sets it for the kernels vitscale starts
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, CASES[case])], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the timing process failed:\n{out.stderr[-3000:]}")
    out = out.stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="demo,B,C", help="comma-separated: " + ",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := [n for n in names if n not in CASES]:
        ap.error(f"unknown cases {unknown}; accepted: {', '.join(CASES)}")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name in names:
        results[name] = {"off": [], "cold": [], "warm": []}
        for _ in range(args.repeats):
            results[name]["off"].append(child(name, None))
            d = tempfile.mkdtemp(prefix="jaxcache_")
            try:
                results[name]["cold"].append(child(name, d))
                results[name]["warm"].append(child(name, d))
            finally:
                shutil.rmtree(d, ignore_errors=True)
        print(
            name,
            {k: round(statistics.median(r["first_step"] for r in v), 2) for k, v in results[name].items()},
            file=sys.stderr,
            flush=True,
        )

    keys = ["init", "first_step", "first_eval", "second_step"]
    print(f"\nPersistent compilation cache: seconds, median of {args.repeats} fresh processes\n")
    print(
        "| case | model | cache | init | first train step | first eval step | second train step | init + first steps |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, by in results.items():
        variant, size, ch, batch = CASES[name]
        for mode, rows in by.items():
            med = {k: statistics.median(r[k] for r in rows) for k in keys}
            total = med["init"] + med["first_step"] + med["first_eval"]
            print(
                f"| {name} | {variant} {size}x{size}x{ch}, batch {batch} | {mode} | {med['init']:.2f} | "
                f"{med['first_step']:.2f} | {med['first_eval']:.2f} | {med['second_step']:.3f} | {total:.2f} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
