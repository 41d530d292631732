"""benchmarks/train_throughput.py on a tiny shape: the round-robin, the summary and the table run,
and its candidate ViT is the library's ViT (same parameters, same outputs). No torch needed."""

import importlib.util
import io
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(root):
    spec = importlib.util.spec_from_file_location("train_throughput", root / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # not as __main__: timm is not imported
    return module


def tiny(bench):
    return bench.Shape((8, 8, 1), patch=4, width=16, depth=1, heads=2, mlp=32, batch=8)  # 8 test devices


def test_candidate_vit_is_the_library_vit(bench):
    """Same parameter tree, same features: a candidate's speed-up is the library's to take."""
    shape = bench.Shape((8, 8, 3), patch=4, width=16, depth=1, heads=2, mlp=32, batch=3)
    ref = shape.vit()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8, 8, 3), dtype=np.float32))
    params = ref.init(jax.random.key(0), x)["params"]
    want = ref.apply({"params": params}, x)[1]["pre_logits"]
    for switches in (
        {},
        {"attn": "dpa"},
        {"attn": "bhnd3"},
        {"attn": "dpa3"},
        {"patch": "dense"},
        {"mlp": "dense"},
        {"attn": "bnhk"},
        {"attn": "bnhk2"},
    ):
        cand = bench.CandViT(
            num_classes=bench.NUM_CLASSES, patch_size=4, width=16, depth=1, mlp_dim=32, num_heads=2, **switches
        )
        shapes = jax.eval_shape(cand.init, jax.random.key(0), x)["params"]
        assert jax.tree.structure(shapes) == jax.tree.structure(params), switches
        assert [a.shape for a in jax.tree.leaves(shapes)] == [a.shape for a in jax.tree.leaves(params)], switches
        got = cand.apply({"params": params}, x)[1]["pre_logits"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(switches))


def test_round_robin_summary_and_table(bench, monkeypatch):
    """The library's step and a candidate for real (compile options included); the baselines as
    stand-ins (the summary only needs their timings)."""
    shape = tiny(bench)
    monkeypatch.setitem(bench.BASELINES, "flax", lambda shape: lambda k: time.sleep(0.001 * k))
    monkeypatch.setitem(bench.BASELINES, "timm", lambda shape: lambda k: time.sleep(0.002 * k))
    monkeypatch.setitem(bench.CANDIDATES, "attn_dpa+ynn_off", bench.make_candidate_by_name("attn_dpa+ynn_off"))
    impls = ["vitscale", "timm", "flax", "attn_dpa+ynn_off"]
    r = bench.measure_shape("T", shape, impls, passes=2, steps=1, warmup=1, log=lambda *_: None, matmul_n=256)
    assert all(len(r["seconds"][i]) == 2 and len(r["cpu_seconds"][i]) == 2 for i in impls)
    s = bench.summarize("T", r)
    assert set(s["impls"]) == set(impls)
    assert s["peak_gflops"] > 0 and all(
        math.isfinite(row["mfu"]) and row["images_per_s"] > 0 for row in s["impls"].values()
    )
    assert "ref_over_impl" in s["impls"]["timm"] and "ref_over_impl_cpu" not in s["impls"]["timm"]
    assert "ref_over_impl_cpu" in s["impls"]["flax"] and "speedup" in s["impls"]["attn_dpa+ynn_off"]
    assert {"over_flax", "over_timm", "cpu_speedup"} <= set(s["impls"]["attn_dpa+ynn_off"])
    out = io.StringIO()
    bench.print_table([s], file=out)
    table = out.getvalue()
    assert "| T | vitscale |" in table and "| T | flax |" in table and "| T | attn_dpa+ynn_off |" in table


def test_cli_rejects_unknown_names(bench):
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "Z"])
    with pytest.raises(SystemExit):
        bench.main(["--candidates", "attn_dpa+nonsense"])
