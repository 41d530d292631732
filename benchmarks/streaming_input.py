"""The streaming input path at scale, on this machine (issue 15), in one run:

  memory  pretrain (subprocess, vitscale.train.run) from a streamed folder dataset of N images and
          of 10 N images of varying sizes; the child's peak RSS must not grow with N.
  speed   images/s per core at 224 px from JPEG, inception_crop + flip_lr: vitscale's streaming
          pipeline (array_record by index, per-example decode in tf.data's parallel map, batch = f(seed,
          step)), with the two ops and with big_vision's fused decode_jpeg_and_inception_crop, vs a
          plain tf.data pipeline written the usual way (list files -> shuffle -> read -> decode_jpeg ->
          sample_distorted_bounding_box crop -> resize -> flip -> batch -> prefetch); and the training
          step's images/s of the demo-sized model, which the input must outrun.

Usage: PYTHONPATH=lib .venv/bin/python benchmarks/streaming_input.py [--small 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from natural_images import photos, write_folder  # noqa: E402
from vitscale import build, config, sharding  # noqa: E402
from vitscale.data import datasets, pipeline, sources  # noqa: E402

CHILD = """
import json, sys, yaml
from vitscale import config, train
cfg = config.validate(config.PretrainConfig, yaml.safe_load(open(sys.argv[1])))
s = train.run(cfg, sys.argv[2])
# VmHWM: this process image's own peak (ru_maxrss keeps the forking parent's peak across exec)
hwm = [int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]
print("RESULT", json.dumps({"rss_mb": hwm / 1024,
      "input": s["input"], "train_examples": s["train_examples"]}))
"""


def memory(tmp: Path, small: int) -> list[dict]:
    import yaml

    rows = []
    for n in (small, 10 * small):
        root = write_folder(tmp / f"imgs_{n}", per_class=n // 11, sizes=(64, 400), seed=n)
        name, data_dir = f"folder:{root}", str(tmp / "tfds")
        t0 = time.perf_counter()
        datasets.get_builder(name, data_dir)  # prepared here, so the child's RSS is training alone
        prep = time.perf_counter() - t0
        params = dict(
            dataset=name,
            data_dir=data_dir,
            input="stream",
            image_size=64,
            channels=3,
            pp_train=["decode", "inception_crop(64)", "flip_lr", "value_range(-1, 1)"],
            pp_eval=["decode", "resize_small(73)", "central_crop(64)", "value_range(-1, 1)"],
            variant="Atto/8",
            total_steps=60,
            batch_size=64,
            warmup_steps=5,
            eval_every=60,
            log_every=20,
            eval_batch_size=128,
        )
        f = tmp / f"p{n}.yaml"
        f.write_text(yaml.safe_dump(params))
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(f), str(tmp / f"run{n}")], capture_output=True, text=True, timeout=600
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
        assert line, out.stdout[-2000:] + out.stderr[-2000:]
        r = json.loads(line[0][7:])
        disk = sum(
            p.stat().st_size for p in Path(datasets.get_builder(name, data_dir).data_dir).glob("*.array_record*")
        )
        rows.append(
            {
                "images": r["train_examples"],
                "prepared_mb": disk / 2**20,
                "prepare_s": prep,
                "train_s": time.perf_counter() - t0,
                "peak_rss_mb": r["rss_mb"],
                "input": r["input"]["train"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def speed(tmp: Path, n: int = 600, batch: int = 64, batches: int = 30, rounds: int = 5) -> dict:
    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp / "photos"
    pics = photos()
    files = []
    for i in range(n):  # ImageNet-like JPEGs: ~375 x 500 crops of the two photographs, 3 classes
        pic = pics[i % 2]
        y, x = rng.integers(0, 427 - 300), rng.integers(0, 640 - 400)
        img = Image.fromarray(pic[y : y + 300, x : x + 400]).resize((500, 375), Image.BILINEAR)
        folder = root / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        files.append(folder / f"{i}.jpg")
        img.save(files[-1], quality=90)
    name, data_dir = f"folder:{root}", str(tmp / "tfds")
    src = sources.open_source(name, "train", data_dir) if datasets.get_builder(name, data_dir) else None
    pipe = pipeline.Pipeline(224, 3, train_ops=("decode", "inception_crop(224)", "flip_lr", "value_range(-1, 1)"))

    def timed(it) -> float:
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - t0)

    fused = pipeline.Pipeline(
        224, 3, train_ops=("decode_jpeg_and_inception_crop(224)", "flip_lr", "value_range(-1, 1)")
    )
    iters = {
        "ours": pipeline.train_batches(src, pipe, global_batch=batch, seed=0),
        "ours_fused": pipeline.train_batches(src, fused, global_batch=batch, seed=0),
    }

    def plain_one(path):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(img),
            tf.zeros([0, 0, 4]),
            area_range=(0.05, 1.0),
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        img = tf.image.resize(tf.slice(img, begin, size), (224, 224))
        img = tf.image.random_flip_left_right(img)
        return img / 127.5 - 1.0

    ds = tf.data.Dataset.from_tensor_slices([str(f) for f in files]).shuffle(n).repeat()
    ds = ds.map(plain_one, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)
    iters["plain"] = ds.as_numpy_iterator()
    for it in iters.values():
        for _ in range(5):
            next(it)  # warm up: tracing, autotune
    passes = {k: [] for k in iters}
    for _ in range(rounds):  # interleaved, so a change in the machine's load hits every pipeline
        for k, it in iters.items():
            passes[k].append(timed(it))
    ours, ours_fused, plain = (float(np.median(passes[k])) for k in ("ours", "ours_fused", "plain"))
    cores = len(os.sched_getaffinity(0))
    return {
        "images": n,
        "batch": batch,
        "cores": cores,
        "vitscale_stream_img_s": ours,
        "vitscale_stream_fused_img_s": ours_fused,
        "plain_tfdata_img_s": plain,
        "vitscale_per_core": ours / cores,
        "vitscale_fused_per_core": ours_fused / cores,
        "plain_per_core": plain / cores,
        "ratio": ours / plain,
        "ratio_fused": ours_fused / plain,
        "passes_img_s": passes,
    }


def train_step_rate(variant: str, image_size: int, channels: int, batch: int = 64, steps: int = 10) -> float:
    """Images/s of the training step alone (jitted, on batches already in memory)."""
    cfg = config.PretrainConfig(variant=variant, image_size=image_size, channels=channels, batch_size=batch)
    trainer = build.trainer(cfg, sharding.make_mesh(), 1000)
    state = trainer.init_fn()
    b = {
        "image": np.random.default_rng(0).uniform(-1, 1, (batch, image_size, image_size, channels)).astype(np.float32),
        "label": np.zeros(batch, np.int32),
    }
    for _ in range(2):
        state, _ = trainer.train_step(state, b)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = trainer.train_step(state, b)
    jax.block_until_ready(state)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=330)
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitscale_stream_bench_") as tmp:
        result = {"speed": speed(Path(tmp))}
        # The demo's model (Pico: width 64, depth 4) at the pipeline's 224 px with 16-px patches, and the
        # demo itself (Pico/4 at 28 px, batch 128): the input must outrun the step several times.
        result["train_step_img_s"] = {
            "Pico/16 at 224 px": train_step_rate("Pico/16", 224, 3),
            "Pico/4 at 28 px (demo)": train_step_rate("Pico/4", 28, 1, batch=128, steps=50),
        }
        result["memory"] = memory(Path(tmp), args.small)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print("parent peak RSS MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    main()
