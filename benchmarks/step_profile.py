"""Where the training step's time goes on XLA:CPU: op time of the library's step (train_throughput.py's
shapes) from a JAX profiler trace, by category (products on YNNPACK, layout copies, attention, MLP and
LayerNorm element-wise work, the rest), and the largest single ops.

Each compiled op (a fusion) is named in the trace; the compiled step's HLO gives its source op, from
which the category follows. Shares are of op time summed over XLA's threads, so they hold under load
better than wall time does (the two cores' other work slows every op alike).

Usage:
  .venv/bin/python -m vitscale.allocator .venv/bin/python benchmarks/step_profile.py --shapes A,B --steps 4
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax

import train_throughput as tt  # this folder's: the shapes and the library's step, as benchmarked
from vitscale import sharding

CATEGORIES = (
    "products (YNNPACK)",
    "layout copies",
    "attention element-wise",
    "MLP element-wise (GELU, bias)",
    "LayerNorm",
    "other (optimizer, loss, embedding)",
)


def category(fusion: str, op_name: str) -> str:
    """The category of one compiled op, from its fusion kind and the source op XLA recorded."""
    kind = re.sub(r"\.\d+$", "", fusion)
    if kind.startswith("ynn") and ("dot_general" in op_name or "conv" in op_name):
        return CATEGORIES[0]
    if "transpose" in kind or kind.startswith("copy"):
        return CATEGORIES[1]
    for key, cat in (("Attention", 2), ("MlpBlock", 3), ("LayerNorm", 4), ("encoder_norm", 4)):
        if key in op_name:
            return CATEGORIES[cat]
    return CATEGORIES[5]


def source_ops(hlo_text: str) -> dict[str, str]:
    """Each fusion of the compiled step -> the source op in its metadata (blocks' numbers dropped)."""
    out = {}
    for m in re.finditer(r"%([\w.\-]+) = \S+ fusion\(.*?op_name=\"([^\"]+)\"", hlo_text):
        op = re.sub(r"encoderblock_\d+", "block", m.group(2)).replace("jit(train_step)/jit(objective)/", "")
        out[m.group(1)] = op
    return out


def profile(name: str, steps: int) -> dict:
    """Trace `steps` steps of shape `name` after a warm-up; op time by category and the top ops."""
    shape = tt.SHAPES[name]
    run = tt.make_vitscale(shape)
    run(3)
    images, labels = tt._batch(shape)
    batch = sharding.put_batch({"image": images, "label": labels}, sharding.make_mesh([-1, 1]))
    ops = source_ops(run.trainer.train_step.lower(run.state(), batch).compile().as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            run(steps)
        events = json.load(gzip.open(next(Path(d).rglob("*.trace.json.gz"))))
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_cat, by_op = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ops:
            op = ops[e["name"]]
            by_cat[category(e["name"], op)] += e["dur"]
            by_op[(re.sub(r"\.\d+$", "", e["name"]), op)] += e["dur"]
    total = sum(by_cat.values())
    return {
        "shape": name,
        "op_ms_per_step": total / 1e3 / steps,
        "share": {c: by_cat[c] / total for c in CATEGORIES},
        "top_ops": [[k, op, t / total] for (k, op), t in by_op.most_common(12)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="A,B", help="comma-separated, from " + ",".join(tt.SHAPES))
    ap.add_argument("--steps", type=int, default=4, help="traced steps per shape")
    ap.add_argument("--json", help="also write the profiles here")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in tt.SHAPES]:
        ap.error(f"unknown shapes {unknown} (shapes: {', '.join(tt.SHAPES)})")
    results = [profile(s, args.steps) for s in shapes]
    print("| category | " + " | ".join(f"shape {r['shape']}" for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for c in CATEGORIES:
        print(f"| {c} | " + " | ".join(f"{100 * r['share'][c]:.1f}%" for r in results) + " |")
    for r in results:
        print(f"\nshape {r['shape']}: {r['op_ms_per_step']:.0f} ms of op time per step; largest ops:")
        for kind, op, share in r["top_ops"]:
            print(f"  {100 * share:5.1f}%  {kind:24s} {op}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
