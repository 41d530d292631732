"""Sharding on 8 CPU devices: the FSDP partition rule, parameters really split, and one train step
on meshes [1, 8], [2, 4], [8, 1] (mesh = [data, fsdp]) equal to the single-device step."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vitscale import loop, optim, sharding
from vitscale.models import vit

sys.path.insert(0, str(Path(__file__).parent))
from multihost_worker import assert_params_match  # noqa: E402

IMAGE_SHAPE = (16, 16, 1)
BATCH = 16
LR = 1e-3
# Lighter XLA optimisation for a busy 2-core machine: every mesh and the reference use the same.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
QKV = ("Transformer", "encoderblock_0", "Attention", "qkv", "kernel")  # [32, 96]


def get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


# ----------------------------------------------------------------------------- the partition rule
def test_fsdp_spec_splits_the_largest_divisible_dimension():
    assert sharding.fsdp_spec((32, 96), 8) == P(None, "fsdp")  # largest dim
    assert sharding.fsdp_spec((96, 32), 8) == P("fsdp", None)
    assert sharding.fsdp_spec((100, 64), 8) == P(None, "fsdp")  # largest (100) does not divide: next
    assert sharding.fsdp_spec((1, 64, 32), 8) == P(None, "fsdp", None)  # pos_embedding [1, N, D]
    assert sharding.fsdp_spec((2, 32, 96), 4) == P(None, None, "fsdp")  # scan-stacked kernels
    assert sharding.fsdp_spec((64, 64), 8) == P("fsdp", None)  # ties: the first
    assert sharding.fsdp_spec((1001, 3), 8) == P()  # nothing divides: replicated
    assert sharding.fsdp_spec((30, 30), 8) == P()  # small (< 1024 elements): replicated
    assert sharding.fsdp_spec((8, 8), 8, min_size=0) == P("fsdp", None)
    assert sharding.fsdp_spec((), 8) == P()  # scalars (step counters)
    assert sharding.fsdp_spec((4096, 4096), 1) == P()  # fsdp 1: nothing to split


def test_tree_shardings_rules_override_fsdp():
    mesh = sharding.make_mesh([1, 8])
    tree = {
        "pos_embedding": jax.ShapeDtypeStruct((1, 64, 32), np.float32),
        "k": jax.ShapeDtypeStruct((32, 96), np.float32),
    }
    default = sharding.tree_shardings(tree, mesh)
    ruled = sharding.tree_shardings(tree, mesh, rules=[("pos_emb", P())])
    assert default["pos_embedding"].spec == P(None, "fsdp", None) and ruled["pos_embedding"].spec == P()
    assert ruled["k"].spec == default["k"].spec == P(None, "fsdp")


def test_make_mesh_resolves_shapes():
    assert dict(sharding.make_mesh([-1, 2]).shape) == {"data": 4, "fsdp": 2}
    assert dict(sharding.make_mesh([1, -1]).shape) == {"data": 1, "fsdp": 8}
    assert sharding.make_mesh([1, 1], devices=jax.devices()[:1]).devices.size == 1
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        sharding.make_mesh([3, 2])


# ----------------------------------------------------------------------------- one train step
def model() -> vit.ViT:
    # Width 32, MLP 128, qkv 96: split 8 ways; LayerNorms, biases and the patch embedding
    # (4*4*1*32 = 512 elements) stay replicated.
    return vit.ViT(num_classes=8, patch_size=4, width=32, depth=2, mlp_dim=128, num_heads=2, pool_type="gap")


def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": rng.uniform(-1, 1, (BATCH, *IMAGE_SHAPE)).astype(np.float32),
        "label": rng.integers(0, 8, BATCH).astype(np.int32),
    }


def make_trainer(mesh) -> loop.Trainer:
    return loop.make_trainer(
        model(), optim.make_optimizer("adamw", LR, weight_decay=0.1), mesh, image_shape=IMAGE_SHAPE
    )


@pytest.fixture(scope="module")
def initial_state():
    """The initial state as host numpy, with a fixed non-zero head kernel (the zero-initialised
    head would stop every gradient below it). Every mesh starts from exactly these values."""
    trainer = make_trainer(sharding.make_mesh([1, 1], devices=jax.devices()[:1]))
    state = jax.device_get(trainer.init_fn.lower().compile(compiler_options=COMPILER_OPTIONS)())
    state.params["head"]["kernel"] = (
        np.random.default_rng(1).normal(0, 0.5, state.params["head"]["kernel"].shape).astype(np.float32)
    )
    return state


def one_step(mesh, state0):
    """Place the initial state with the trainer's shardings, place the batch, run one AdamW step.
    Returns (new state as numpy, metrics as numpy, the new state as placed, the placed batch)."""
    trainer = make_trainer(mesh)
    state = jax.device_put(state0, trainer.state_shardings)
    placed = sharding.put_batch(batch(), mesh)
    step = trainer.train_step.lower(state, placed).compile(compiler_options=COMPILER_OPTIONS)
    new, out = step(state, placed)
    return jax.device_get(new), jax.device_get(out), new, placed


@pytest.fixture(scope="module")
def reference(initial_state):
    return one_step(sharding.make_mesh([1, 1], devices=jax.devices()[:1]), initial_state)


@pytest.mark.parametrize("mesh_shape", [(1, 8), (2, 4), (8, 1)])
def test_train_step_matches_single_device(initial_state, reference, mesh_shape):
    ref_state, ref_out, _, _ = reference
    mesh = sharding.make_mesh(mesh_shape)
    state, out, live, placed = one_step(mesh, initial_state)
    data, fsdp = mesh_shape

    # Same loss and gradient norm: float32 sums in another order.
    np.testing.assert_allclose(out["loss"], ref_out["loss"], rtol=1e-6)
    np.testing.assert_allclose(out["grad_norm"], ref_out["grad_norm"], rtol=1e-5)
    assert ref_out["grad_norm"] > 0.1  # gradients reach the body
    # Same gradients, seen through Adam's second moment nu = (1 - b2) g^2 after one step.
    nu, ref_nu = state.opt_state[1].nu, ref_state.opt_state[1].nu
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(nu), jax.tree.leaves(ref_nu)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-14, err_msg=jax.tree_util.keystr(path))
    assert float(get(ref_nu, QKV).max()) > 0  # the body's gradient is not zero
    # Same updated parameters (to 1% of lr; the key bias, whose gradient is rounding noise that
    # Adam scales up to ~lr, only within Adam's bound: see assert_params_match).
    assert_params_match(state.params, ref_state.params, ref_nu, LR, steps=1)
    assert int(state.step) == 1

    # Parameters and optimizer state are really split over "fsdp", and the batch over all devices.
    kernel = get(live.params, QKV)
    shards = kernel.addressable_shards
    assert len(shards) == 8
    assert {s.data.shape for s in shards} == {(32, 96 // fsdp)}
    assert (
        len({tuple((i.start, i.stop) for i in s.index) for s in shards}) == fsdp
    )  # fsdp distinct pieces, each on `data` devices
    assert {s.data.shape for s in get(live.opt_state[1].nu, QKV).addressable_shards} == {(32, 96 // fsdp)}
    mlp = live.params["Transformer"]["encoderblock_1"]["MlpBlock"]["Dense_0"]["kernel"]  # [32, 128]
    assert {s.data.shape for s in mlp.addressable_shards} == {(32, 128 // fsdp)}
    ln = live.params["Transformer"]["encoder_norm"]["scale"]  # 32 elements: replicated
    assert {s.data.shape for s in ln.addressable_shards} == {(32,)}
    emb = live.params["embedding"]["kernel"]  # 512 elements: replicated
    assert {s.data.shape for s in emb.addressable_shards} == {(4, 4, 1, 32)}
    assert {s.data.shape for s in placed["image"].addressable_shards} == {(BATCH // 8, *IMAGE_SHAPE)}


def test_single_device_reference_is_replicated(reference):
    _, _, live, _ = reference
    kernel = get(live.params, QKV)
    assert len(kernel.addressable_shards) == 1 and kernel.addressable_shards[0].data.shape == (32, 96)
