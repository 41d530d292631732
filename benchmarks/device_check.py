"""Device check: the library's training step on this machine's accelerators, as images/s per device and MFU.

Cases: ViT-B/16 and ViT-L/16 at 224 px in bfloat16 (1000 classes, GAP head), each at the largest
batch per device from a short list that fits in memory, and the README demo's model as
parameters/pretrain/demo.yaml gives it (Pico/4, 28 px, its dtype and batch). Each case: the step of
`vitscale.loop.make_trainer` (the backend's kernels: cuDNN attention on GPUs where
vit.attention_implementation allows it; AdamW, gradient clipping; donated state) on all devices,
data-parallel, the batch already on the devices (no input pipeline), `--warmup` steps (compilation
included), then `--steps` timed steps. Reported per case: images/s, images/s per device, MFU against
vitscale.perf's peak for the device kind and dtype, and the attention kernel. On a GPU where cuDNN's
attention was chosen, B/16 is also timed with XLA's attention when the time budget allows.

Then a group of 8 small models (Pico/7 at 28 px, batch 128 each, float32, each with its own learning
rate and seed) trained as one program (vitscale.stacked, what `vitscale sweep` does for runs that differ
only in lr, weight decay, seed or warmup) against the same runs one after another: one run's step
timed, times 8 (their programs differ only in constants). Reported under "groups": images/s summed over
the copies for both, their ratio, and MFU per copy and in all.

It needs JAX, Flax, optax, orbax, PyYAML and pydantic, and no TensorFlow: it imports only the
TensorFlow-free part of vitscale (loop, models: vit and flops, optim, sharding, backend, perf, config).
benchmarks/README.md says how to carry a missing package (pydantic) to a bare machine as a wheel.

Usage:
  python benchmarks/device_check.py --out device_check.json    # on the accelerator machine, < 5 min
  python benchmarks/device_check.py --dry-run                  # tiny shapes on a CPU (CI: tests/test_device_check.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitscale import config, loop, optim, sharding, stacked
from vitscale.models import vit

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "parameters" / "pretrain" / "demo.yaml"


@dataclasses.dataclass
class Case:
    name: str
    model: vit.ViT
    image: tuple[int, int, int]
    per_device_batches: tuple[int, ...]  # tried largest first; the first that fits is timed
    attention: str | None = None  # "xla": force XLA's attention (VITSCALE_ATTENTION)


def demo_case(per_device_batches: tuple[int, ...] | None = None) -> Case:
    """The README demo's model, dtype and batch (parameters/pretrain/demo.yaml)."""
    cfg = config.validate(config.PretrainConfig, config.load_yaml(DEMO), DEMO)
    model = vit.make_model(cfg.variant, 10, pool_type=cfg.pool_type, posemb=cfg.posemb, dtype=cfg.dtype)
    batches = per_device_batches or (max(1, cfg.batch_size // jax.device_count()),)
    return Case(f"demo ({cfg.variant}, {cfg.dtype})", model, (cfg.image_size, cfg.image_size, cfg.channels), batches)


def cases(dry_run: bool) -> list[Case]:
    if dry_run:  # one-block stand-ins for B/16 and L/16 in bf16, and the demo's model cut to one block
        tiny = lambda width: vit.ViT(  # noqa: E731
            num_classes=1000, patch_size=4, width=width, depth=1, mlp_dim=2 * width, num_heads=2, dtype=jnp.bfloat16
        )
        demo = demo_case((8,))
        return [
            Case("B/16 (dry: width 16, 1 block, 8 px)", tiny(16), (8, 8, 3), (16, 8)),
            Case("L/16 (dry: width 32, 1 block, 8 px)", tiny(32), (8, 8, 3), (8,)),
            dataclasses.replace(demo, name=demo.name + " (dry: 1 block)", model=demo.model.clone(depth=1)),
        ]
    return [
        Case("B/16", vit.make_model("B/16", 1000, dtype="bfloat16"), (224, 224, 3), (512, 256, 128, 64)),
        Case("L/16", vit.make_model("L/16", 1000, dtype="bfloat16"), (224, 224, 3), (256, 128, 64, 32)),
        demo_case(),
    ]


def _out_of_memory(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def measure(case: Case, mesh, steps: int, warmup: int, log=print) -> dict[str, Any]:
    """Time case's training step at the largest batch of its list that fits; one row."""
    tx = optim.make_optimizer("adamw", 1e-4, weight_decay=1e-4, grad_clip_norm=1.0)
    tried = []
    previous = os.environ.get("VITSCALE_ATTENTION")
    if case.attention:
        os.environ["VITSCALE_ATTENTION"] = case.attention
    try:
        for per_device in case.per_device_batches:
            batch = per_device * mesh.size
            trainer = state = arrays = None
            try:
                t0 = time.perf_counter()
                trainer = loop.make_trainer(case.model, tx, mesh, image_shape=case.image, loss="softmax_xent")
                rng = np.random.default_rng(0)
                images = rng.standard_normal((batch, *case.image), np.float32)
                labels = rng.integers(0, case.model.num_classes, batch).astype(np.int32)
                arrays = sharding.put_batch({"image": images, "label": labels}, mesh)
                state = trainer.init_fn()
                for _ in range(warmup):
                    state, out = trainer.train_step(state, arrays)
                jax.block_until_ready(out)
                warm = time.perf_counter() - t0
                t0 = time.perf_counter()
                for _ in range(steps):
                    state, out = trainer.train_step(state, arrays)
                jax.block_until_ready((state, out))
                seconds = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 (out of memory: the next batch; anything else: reported)
                tried.append({"per_device_batch": per_device, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                log(f"  {case.name}: batch {per_device}/device failed: {tried[-1]['error'][:160]}")
                del trainer, state, arrays
                gc.collect()
                if _out_of_memory(e):
                    continue
                return {"case": case.name, "error": tried[-1]["error"], "tried": tried}
            rate = steps * batch / seconds
            peak = trainer.peak
            row = {
                "case": case.name,
                "image": list(case.image),
                "dtype": str(np.dtype(case.model.dtype)),
                "devices": mesh.size,
                "device_kind": mesh.devices.flat[0].device_kind,
                "batch": batch,
                "per_device_batch": per_device,
                "steps": steps,
                "seconds": seconds,
                "warmup_seconds": warm,
                "images_per_s": rate,
                "images_per_s_per_device": rate / mesh.size,
                "forward_flops_per_image": trainer.forward_flops,
                "peak_flops_per_s": peak.flops_per_s,
                "peak_source": peak.source,
                "mfu": rate * 3 * trainer.forward_flops / (mesh.size * peak.flops_per_s),
                "attention": trainer.attention,
                "loss": float(out["loss"]),
                "tried": tried,
            }
            log(
                f"  {case.name}: batch {per_device}/device, {row['images_per_s_per_device']:.1f} img/s/device, "
                f"MFU {100 * row['mfu']:.1f}%, attention {row['attention']} (warm-up {warm:.0f} s)"
            )
            del trainer, state, arrays
            gc.collect()
            return row
        return {"case": case.name, "error": "no batch of the list fits", "tried": tried}
    finally:
        if previous is None:
            os.environ.pop("VITSCALE_ATTENTION", None)
        else:
            os.environ["VITSCALE_ATTENTION"] = previous


GROUP_COPIES = 8


def _timed(step, state, batch, steps: int, warmup: int) -> tuple[float, float]:
    """(warm-up seconds, compilation included; seconds per step) of `step` from `state` on `batch`."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        state, out = step(state, batch)
    jax.block_until_ready(out)
    warm, t0 = time.perf_counter() - t0, time.perf_counter()
    for _ in range(steps):
        state, out = step(state, batch)
    jax.block_until_ready((state, out))
    return warm, (time.perf_counter() - t0) / steps


def measure_group(dry_run: bool, mesh, steps: int, warmup: int, copies: int = GROUP_COPIES) -> dict[str, Any]:
    """`copies` small models as one program against one after another: images/s summed over copies, MFU."""
    if dry_run:
        model, image, batch = (
            vit.ViT(num_classes=10, patch_size=4, width=16, depth=1, mlp_dim=32, num_heads=2),
            (8, 8, 1),
            8,
        )
    else:
        model, image, batch = vit.make_model("Pico/7", 10), (28, 28, 1), 128
    batch = -(-batch // mesh.size) * mesh.size
    trainers = [
        loop.make_trainer(
            model,
            optim.make_optimizer("adamw", lambda _, i=i: 1e-4 * (i + 1), weight_decay=1e-4),
            mesh,
            image_shape=image,
            seed=i,
        )
        for i in range(copies)
    ]
    rng = np.random.default_rng(0)
    data = {
        "image": rng.standard_normal((batch, *image), np.float32),
        "label": rng.integers(0, 10, batch).astype(np.int32),
    }
    alone_warm, alone_s = _timed(
        trainers[0].train_step, trainers[0].init_fn(), sharding.put_batch(data, mesh), steps, warmup
    )
    lrs = jnp.asarray([1e-4 * (i + 1) for i in range(copies)])  # one vmapped update, as a sweep's group has
    g = stacked.make(trainers, mesh, lambda i: optim.make_optimizer("adamw", lambda _: lrs[i], weight_decay=1e-4))
    stacked_data = jax.device_put({k: np.stack([v] * copies) for k, v in data.items()}, g.batch_sharding)
    group_warm, group_s = _timed(g.step, g.stack(tuple(t.init_fn() for t in trainers)), stacked_data, steps, warmup)
    mfu = lambda rate: rate * 3 * trainers[0].forward_flops / (mesh.size * trainers[0].peak.flops_per_s)
    alone_rate, group_rate = batch / alone_s, copies * batch / group_s
    row = {
        "case": f"{copies} x {'tiny (dry)' if dry_run else 'Pico/7'}, batch {batch} each",
        "copies": copies, "batch": batch, "steps": steps, "forward_flops_per_image": trainers[0].forward_flops,
        "alone_images_per_s": alone_rate, "alone_warmup_seconds": alone_warm, "alone_mfu": mfu(alone_rate),
        "group_images_per_s": group_rate, "group_warmup_seconds": group_warm, "group_mfu": mfu(group_rate),
        "group_mfu_per_copy": mfu(group_rate) / copies, "ratio": group_rate / alone_rate,
    }  # fmt: skip
    print(
        f"  group: {row['case']}: {group_rate:.0f} img/s against {alone_rate:.0f} one after another "
        f"({row['ratio']:.2f}x), MFU {100 * row['group_mfu']:.1f}% against {100 * row['alone_mfu']:.1f}%"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, 1 step: checks the script on a CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; dry run 1)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps incl. compilation (default 3; dry 1)")
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip further cases past this many seconds")
    ap.add_argument("--out", default="device_check.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    steps = args.steps or (1 if args.dry_run else 20)
    warmup = args.warmup or (1 if args.dry_run else 3)
    t_start = time.perf_counter()

    sharding.initialize()  # GPU compiler flags (backend.configure_gpu) before the backend starts
    mesh = sharding.make_mesh([-1, 1])
    device = mesh.devices.flat[0]
    header = {
        "jax": jax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "devices": mesh.size,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "python": sys.version.split()[0],
        "dry_run": args.dry_run,
    }
    print(f"device check: {mesh.size} x {device.device_kind} ({device.platform}), jax {jax.__version__}")
    todo = cases(args.dry_run)
    rows = []
    for case in todo:
        if time.perf_counter() - t_start > args.budget_s:
            rows.append({"case": case.name, "skipped": f"over the {args.budget_s:.0f} s budget"})
            continue
        rows.append(measure(case, mesh, steps, warmup))
        again = None
        if rows[-1].get("attention") == "cudnn" and case.name == "B/16":  # the same, with XLA's attention
            again = dataclasses.replace(case, name="B/16, XLA attention", attention="xla")
        elif "error" in rows[-1] and device.platform == "gpu" and case.attention is None:  # cuDNN's failure?
            again = dataclasses.replace(case, name=f"{case.name}, XLA attention", attention="xla")
        if again is not None:
            todo.insert(todo.index(case) + 1, again)
    try:  # the dry run: 2 copies (8 take minutes to compile on a busy CPU: each copy's update is its own code)
        groups = [measure_group(args.dry_run, mesh, steps, warmup, copies=2 if args.dry_run else GROUP_COPIES)]
    except Exception as e:  # noqa: BLE001 - reported, the rows above stand
        groups = [{"case": f"{GROUP_COPIES} small models", "error": f"{type(e).__name__}: {str(e)[:300]}"}]
    header["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
    header["seconds"] = time.perf_counter() - t_start
    result = {**header, "rows": rows, "groups": groups}
    print("\n| case | batch/device | img/s/device | MFU | attention |\n|---|---|---|---|---|")
    for r in rows:
        if "mfu" in r:
            print(
                f"| {r['case']} | {r['per_device_batch']} | {r['images_per_s_per_device']:.1f} | "
                f"{100 * r['mfu']:.1f}% | {r['attention']} |"
            )
        else:
            print(f"| {r['case']} | - | - | - | {r.get('error') or r.get('skipped')} |")
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0 if all("mfu" in r for r in rows) and all("ratio" in g for g in groups) else 1


if __name__ == "__main__":
    sys.exit(main())
