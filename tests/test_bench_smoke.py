"""benchmarks/train_throughput.py on a tiny shape: the round-robin, the summary and the table run;
its vitscale row times exactly the library's step (loop.make_trainer's, same state, same update);
its plain Flax ViT is the library's ViT in size. No torch needed."""

import importlib.util
import io
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitscale import backend, loop, sharding


@pytest.fixture(scope="module")
def bench(root):
    spec = importlib.util.spec_from_file_location("train_throughput", root / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # not as __main__: timm is not imported
    return module


def tiny(bench, batch=8):
    return bench.Shape((8, 8, 1), patch=4, width=16, depth=1, heads=2, mlp=32, batch=batch)  # 8 test devices


@pytest.mark.parametrize(
    "batch", [8, pytest.param(512, marks=pytest.mark.slow)]
)  # on the 8 test devices: 1 and 4 gradient chains a device
def test_vitscale_runner_is_the_library_step(bench, batch):
    """Two steps of the benchmark's vitscale runner end in the same state, bit for bit, as two steps
    of loop.make_trainer's step from the library's ViT of the shape, its AdamW and its default mesh
    on the same batch: the row times the library's step (kernels, chains, optimizer) and nothing else."""
    shape = tiny(bench, batch)
    assert backend.default_chains(batch // len(jax.devices()), "cpu") == {8: 1, 512: 4}[batch]
    run = bench.make_vitscale(shape)
    run(2)
    got = run.state()

    mesh = sharding.make_mesh([-1, 1])
    model = shape.vit()
    tx = bench.optim.make_optimizer(
        "adamw", bench.LR, weight_decay=bench.WEIGHT_DECAY, grad_clip_norm=None, mu_dtype="float32"
    )
    trainer = loop.make_trainer(model, tx, mesh, image_shape=shape.image, loss="softmax_xent", seed=0)
    images, labels = bench._batch(shape)
    batch_arrays = sharding.put_batch({"image": images, "label": labels}, mesh)
    state = trainer.init_fn()
    for _ in range(2):
        state, out = trainer.train_step(state, batch_arrays)
    assert np.isfinite(float(out["loss"]))
    assert int(got.step) == int(state.step) == 2
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert run.trainer.model.kernels in (
        backend.CPU,
        backend.CPU_SMALL_HEADS,
    )  # the CPU kernels are on (tests run on the CPU)


def test_flax_baseline_is_the_library_vit_in_size(bench):
    """The plain Flax ViT has the library ViT's parameter count (and a learned position embedding of
    the same shape) for every benchmark shape: the flax row trains the same model, written plainly."""
    for name, shape in bench.SHAPES.items():
        x = jax.ShapeDtypeStruct((1, *shape.image), jnp.float32)
        flax_model = bench.FlaxViT(shape.patch, shape.width, shape.depth, shape.heads, shape.mlp)
        ours = jax.eval_shape(shape.vit().init, jax.random.key(0), x)["params"]
        theirs = jax.eval_shape(flax_model.init, jax.random.key(0), x)["params"]
        count = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))
        assert count(theirs) == count(ours), name
        assert theirs["pos_embedding"].shape == ours["pos_embedding"].shape, name


def test_round_robin_summary_and_table(bench, monkeypatch):
    """The library's step for real; the baselines as stand-ins (the summary only needs their timings)."""
    shape = tiny(bench)
    monkeypatch.setitem(bench.BASELINES, "flax", lambda shape: lambda k: time.sleep(0.001 * k))
    monkeypatch.setitem(bench.BASELINES, "timm", lambda shape: lambda k: time.sleep(0.002 * k))
    impls = ["vitscale", "timm", "flax"]
    r = bench.measure_shape("T", shape, impls, passes=2, steps=1, warmup=1, log=lambda *_: None, matmul_n=256)
    assert all(len(r["seconds"][i]) == 2 and len(r["cpu_seconds"][i]) == 2 for i in impls)
    s = bench.summarize("T", r)
    assert set(s["impls"]) == set(impls)
    assert s["peak_gflops"] > 0 and all(
        math.isfinite(row["mfu"]) and row["images_per_s"] > 0 for row in s["impls"].values()
    )
    assert "ref_over_impl" in s["impls"]["timm"] and "ref_over_impl_cpu" not in s["impls"]["timm"]
    assert {"ref_over_impl", "ref_over_impl_cpu"} <= set(s["impls"]["flax"])
    assert "ref_over_impl" not in s["impls"]["vitscale"]
    out = io.StringIO()
    bench.print_table([s], file=out)
    table = out.getvalue()
    assert "| T | vitscale |" in table and "| T | flax |" in table and "| T | timm |" in table


def test_cli_rejects_unknown_names(bench):
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "Z"])
    with pytest.raises(SystemExit):
        bench.main(["--impls", "vitscale,nonsense"])
