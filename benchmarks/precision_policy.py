"""The precision policy's check: the README demo (parameters/pretrain/demo.yaml) trained in float32 and
in bfloat16 from the same seed, its final test accuracy side by side, and each run's MFU.

bfloat16 (vitscale.models.vit, "Precision policy"): bf16 matmul inputs and activations; float32
parameters, LayerNorm statistics, softmax, head and loss. The claim checked: the bf16 run ends
within 1 point of the float32 run's test accuracy. bf16 is slow on CPUs (no bf16 matrix units
here), so `--steps` shortens both runs alike (the schedule keeps its shape: warmup, cosine to 0).

Usage:
  .venv/bin/python -m vitscale.allocator .venv/bin/python benchmarks/precision_policy.py --steps 600 --json p.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vitscale import config, metrics, train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "parameters" / "pretrain" / "demo.yaml"


def run(dtype: str, steps: int, out: Path) -> dict:
    params = {**config.load_yaml(DEMO), "dtype": dtype, "total_steps": steps, "eval_every": steps}
    params["warmup_steps"] = min(params["warmup_steps"], steps // 10)
    summary = train.run(config.validate(config.PretrainConfig, params, DEMO), out / dtype)
    return {
        "dtype": dtype,
        "steps": steps,
        "test_acc": summary["final"][metrics.TEST_ACC],
        "mfu": summary["mfu"],
        "images_per_s_per_device": summary["perf"]["images_per_s_per_device"],
        "peak": summary["perf"]["peak"],
        "wall_seconds": summary["wall_seconds_this_session"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000, help="steps of each run (the demo: 3000)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="one run only (two processes side by side)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="precision_policy_") as tmp:
        rows = [
            run(dtype, args.steps, Path(tmp)) for dtype in ([args.dtype] if args.dtype else ["float32", "bfloat16"])
        ]
    if args.dtype:
        print(json.dumps(rows[0], indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(rows[0], indent=1) + "\n")
        return 0
    gap = 100 * (rows[1]["test_acc"] - rows[0]["test_acc"])
    for r in rows:
        print(
            f"{r['dtype']:>9}: test acc {100 * r['test_acc']:.2f}% after {r['steps']} steps, "
            f"MFU {100 * r['mfu']:.1f}%, {r['images_per_s_per_device']:.0f} img/s/device, {r['wall_seconds']:.0f} s"
        )
    print(f"bf16 - f32: {gap:+.2f} points ({'within' if abs(gap) <= 1 else 'NOT within'} 1 point)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "gap_points": gap}, indent=1) + "\n")
    return 0 if abs(gap) <= 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
