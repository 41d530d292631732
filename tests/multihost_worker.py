"""One process ("host") of the two-process JAX job that tests/test_multihost.py starts on loopback.

    python tests/multihost_worker.py COORDINATOR_ADDRESS PROCESS_ID NUM_PROCESSES DATA FSDP OUT.npz [STREAM]

Each process sees its own CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=4), joins
the job through `vitscale.sharding.initialize`, builds the same trainer on a mesh over all
processes' devices, feeds its own slice of the global batch (`pipeline.train_batches(...,
host=pipeline.Host(process_index, process_count))` + `sharding.put_batch`), runs `STEPS` train steps
and writes the losses and the gathered parameters to OUT.npz. With STREAM (`DATASET@DATA_DIR`, a prepared folder
dataset) it also writes this process's slices of the first streamed batches (`stream_batches`).
The tests import `run`, `batches`, `stream_batches` and
`assert_params_match` from here, so that the one-process reference runs the very same code.
"""

from __future__ import annotations

import sys
import time

T_START = time.time()

import jax  # noqa: E402 - after T_START: the import's time counts
import numpy as np  # noqa: E402

from vitscale import loop, optim, sharding  # noqa: E402
from vitscale.data import pipeline, sources  # noqa: E402
from vitscale.models import vit  # noqa: E402

IMAGE_SHAPE = (16, 16, 1)
GLOBAL_BATCH = 16
STEPS = 2
LR = 1e-3
# Lighter XLA optimisation: compiling is most of the time on a busy 2-core machine; the reference
# uses the same options, so it does not change what is compared.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def synthetic_split(n: int = 64, num_classes: int = 8) -> sources.Split:
    """A fixed little image set (so the test needs no installed dataset)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
    images[np.arange(n), labels, :, 0] = 255  # a learnable signal: row `label` is bright
    return sources.Split(name="synthetic", images=images, labels=labels, num_classes=num_classes)


def batches(process_index: int, process_count: int):
    pipe = pipeline.Pipeline(image_size=IMAGE_SHAPE[0], channels=IMAGE_SHAPE[2])
    return pipeline.train_batches(
        synthetic_split(),
        pipe,
        global_batch=GLOBAL_BATCH,
        seed=0,
        host=pipeline.Host(process_index, process_count),
    )


STREAM_OPS = ("decode", "inception_crop(16)", "flip_lr", "value_range(-1, 1)")


def stream_batches(spec: str, process_index: int, process_count: int, steps: int = 2) -> list[dict]:
    """This process's slices of the first `steps` global batches streamed from `DATASET@DATA_DIR`."""
    name, data_dir = spec.rsplit("@", 1)
    src = sources.open_source(name, "train", data_dir)
    it = pipeline.train_batches(
        src,
        pipeline.Pipeline(16, 3, train_ops=STREAM_OPS),
        global_batch=GLOBAL_BATCH,
        seed=1,
        host=pipeline.Host(process_index, process_count),
    )
    return [next(it) for _ in range(steps)]


def build(mesh: jax.sharding.Mesh):
    """(trainer, compiled train step, initial state) for a tiny ViT with dims divisible by 8."""
    model = vit.ViT(num_classes=8, patch_size=4, width=32, depth=2, mlp_dim=128, num_heads=2, pool_type="gap")
    tx = optim.make_optimizer("adamw", LR, weight_decay=0.1)
    trainer = loop.make_trainer(model, tx, mesh, image_shape=IMAGE_SHAPE)
    state = trainer.init_fn.lower().compile(compiler_options=COMPILER_OPTIONS)()
    abstract_batch = {
        "image": jax.ShapeDtypeStruct((GLOBAL_BATCH, *IMAGE_SHAPE), np.float32, sharding=sharding.batch_sharding(mesh)),
        "label": jax.ShapeDtypeStruct((GLOBAL_BATCH,), np.int32, sharding=sharding.batch_sharding(mesh)),
    }
    step = trainer.train_step.lower(state, abstract_batch).compile(compiler_options=COMPILER_OPTIONS)
    return trainer, step, state


def assert_params_match(params, ref_params, ref_nu, lr: float, steps: int, where: str = "") -> None:
    """Parameters after a few Adam(W) steps equal the reference's, to float tolerance.

    Adam divides by sqrt(v): a parameter whose true gradient is zero moves by about lr times the
    sign of float rounding noise. In a ViT that is the key bias (softmax is invariant to it; its
    "gradient" is ~1e-10 while every other gradient here is above 1e-7), so where the reference's
    gradient RMS sqrt(nu / (1 - b2)) is below 1e-8 we only check the Adam bound |delta| <= lr per
    step; everywhere else the update must agree to 1% of lr (bf16 first moments round the same
    gradient to within 2^-8), which a wrong gradient (moving a parameter by ~lr) cannot pass.
    """
    flat = jax.tree_util.tree_leaves_with_path(params)
    for (path, a), b, nu in zip(flat, jax.tree.leaves(ref_params), jax.tree.leaves(ref_nu)):
        a, b = np.asarray(a), np.asarray(b)
        noise = np.sqrt(np.asarray(nu, np.float64) / 1e-3) < 1e-8
        name = f"{where}{jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(a[~noise], b[~noise], rtol=1e-5, atol=1e-2 * lr, err_msg=name)
        assert np.all(np.abs(a[noise] - b[noise]) <= 2.02 * lr * steps), name


def run(mesh: jax.sharding.Mesh, process_index: int, process_count: int) -> tuple[np.ndarray, dict, dict]:
    """STEPS train steps; returns (losses, parameters, Adam's nu) gathered to every process as numpy."""
    from jax.experimental import multihost_utils

    _, step, state = build(mesh)
    it = batches(process_index, process_count)
    losses = []
    for _ in range(STEPS):
        state, out = step(state, sharding.put_batch(next(it), mesh))
        losses.append(np.asarray(multihost_utils.process_allgather(out["loss"], tiled=True)).reshape(-1)[0])
    params = multihost_utils.process_allgather(state.params, tiled=True)
    nu = multihost_utils.process_allgather(state.opt_state[1].nu, tiled=True)
    return np.array(losses), jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, nu)


def main(argv: list[str]) -> None:
    address, pid, nproc, d, f, out, *stream = argv
    t0 = time.time()
    print(f"process {pid}: imports took {t0 - T_START:.1f} s", flush=True)
    sharding.initialize(address, int(nproc), int(pid), initialization_timeout=60)
    assert jax.process_count() == int(nproc) and jax.process_index() == int(pid), (jax.process_count(),)
    mesh = sharding.make_mesh([int(d), int(f)])
    print(f"process {pid}: joined the job in {time.time() - t0:.1f} s", flush=True)
    losses, params, _ = run(mesh, jax.process_index(), jax.process_count())
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    for s, batch in enumerate(stream_batches(stream[0], jax.process_index(), jax.process_count()) if stream else []):
        flat.update({f"stream/{s}/{k}": v for k, v in batch.items()})
    np.savez(
        out,
        losses=losses,
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        mesh_processes=np.vectorize(lambda dev: dev.process_index)(mesh.devices),
        **flat,
    )
    print(f"process {pid}: losses {losses.tolist()} in {time.time() - t0:.1f} s", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
