"""Training behaviour: the loss falls on a fixed batch; losses match their closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from test_events import assert_same_scalars, read_events
from vitscale import build, checks, config, loop, runs, sharding, train
from vitscale.data import pipeline, sources


def test_sigmoid_and_softmax_xent_closed_forms():
    logits = jnp.array([[2.0, -1.0, 0.5]])
    labels = jnp.array([2])
    z = np.array([2.0, -1.0, 0.5], np.float64)
    soft = -(z[2] - np.log(np.exp(z).sum()))
    sig = -(np.log(1 / (1 + np.exp(-z[2]))) + np.log(1 - 1 / (1 + np.exp(-z[0]))) + np.log(1 - 1 / (1 + np.exp(-z[1]))))
    np.testing.assert_allclose(loop.softmax_xent(logits, labels)[0], soft, rtol=1e-6)
    np.testing.assert_allclose(loop.sigmoid_xent(logits, labels)[0], sig, rtol=1e-6)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    cfg = config.validate(
        config.PretrainConfig,
        dict(variant="Atto/7", batch_size=32, total_steps=30, warmup_steps=0, lr=3e-3, schedule="constant"),
    )
    split = sources.load_split("fashion_mnist", "train[:32]")
    batch = next(pipeline.train_batches(split, build.pipeline(cfg), global_batch=32, seed=0))
    mesh = sharding.make_mesh(cfg.mesh)
    model = build.model(cfg, 10)
    trainer = loop.make_trainer(model, build.optimizer(cfg, build.schedule(cfg)), mesh, image_shape=(28, 28, 1))
    state = trainer.init_fn()
    placed = sharding.put_batch(batch, mesh)
    losses = []
    for _ in range(30):
        state, out = trainer.train_step(state, placed)
        losses.append(float(out["loss"]))
    np.testing.assert_allclose(losses[0], np.log(10), rtol=1e-3)  # zero-init head: uniform prediction
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30


@pytest.mark.slow
def test_cooldown_branches_leave_the_main_run_and_cool_down(tmp_path):
    cfg = config.validate(
        config.PretrainConfig,
        dict(
            variant="Atto/7",
            train_examples=512,
            test_split="test[:128]",
            batch_size=16,
            total_steps=24,
            warmup_steps=4,
            schedule="rsqrt",
            timescale=10,
            cooldown_steps=4,
            lr=1e-3,
            eval_every=8,
            log_every=1,
            checkpoint_every=8,
            cooldown_branches=[dict(start=8, steps=6), dict(start=16, steps=4)],
            optimizer="adafactor",
        ),
    )
    summary = train.run(cfg, tmp_path / "run")
    curves = runs.load_curves(tmp_path / "run")
    assert sorted(curves) == ["cooldown_16+4", "cooldown_8+6", "main"]
    main = {r["step"]: r for r in curves["main"] if "lr" in r}
    b8 = {r["step"]: r for r in curves["cooldown_8+6"] if "lr" in r}
    assert max(b8) == 14
    for s in range(1, 9):  # identical to the main run up to the branch point
        assert b8[s]["train/loss"] == main[s]["train/loss"]
    for s in range(9, 15):  # lr(t) = main's rsqrt lr times (T - t)/k, T = 14, k = 6 (logged at t = s - 1)
        t = s - 1
        expect = 1e-3 / np.sqrt(1 + (t - 4) / 10) * min(1, (14 - t) / 6)
        np.testing.assert_allclose(b8[s]["lr"], expect, rtol=1e-5)
    assert [b["total_steps"] for b in summary["branches"]] == [14, 20]
    for b in summary["branches"]:  # each branch's summary holds its own last evaluation
        last = [r for r in curves[b["name"]] if "test/acc" in r][-1]
        assert last["step"] == b["total_steps"] and b["metrics"]["test/acc"] == last["test/acc"]
    # TensorBoard sees the run and each branch with every scalar of their metrics.jsonl, and the parameters.
    for folder in [tmp_path / "run", *sorted((tmp_path / "run" / "branches").iterdir())]:
        assert_same_scalars(folder)
        assert "optimizer: adafactor" in read_events(folder)[1]["parameters"]


def _loss_curve(dtype: str, seed: int, steps: int = 300) -> np.ndarray:
    cfg = config.validate(
        config.PretrainConfig,
        dict(variant="Femto/7", batch_size=64, total_steps=steps, warmup_steps=20, lr=3e-3, dtype=dtype, seed=seed),
    )
    split = sources.load_split("fashion_mnist", "train[:6400]")
    # One device: 900 steps of 8-device collectives on 2 busy cores risk XLA:CPU's rendezvous timeout.
    mesh = sharding.make_mesh([1, 1], devices=jax.devices()[:1])
    # One gradient chain: the chains only split the batch (test_gradient_chains_give_the_full_batch_update);
    # the comparison here is about bf16 arithmetic.
    trainer = loop.make_trainer(
        build.model(cfg, 10),
        build.optimizer(cfg, build.schedule(cfg)),
        mesh,
        image_shape=(28, 28, 1),
        seed=seed,
        chains=1,
    )
    state = trainer.init_fn()
    batches = pipeline.train_batches(split, build.pipeline(cfg), global_batch=64, seed=seed)
    losses = []
    for _ in range(steps):
        state, out = trainer.train_step(state, sharding.put_batch(next(batches), mesh))
        losses.append(out["loss"])
    return np.asarray(jax.device_get(losses), np.float64)


@pytest.mark.long  # two 300-step trainings: make test-long
def test_bfloat16_training_tracks_float32_within_seed_noise():
    """Mixed precision (bf16 activations, f32 parameters) over 300 steps on real images: its loss curve
    differs from the f32 run of the same seed by no more than two f32 runs of different seeds differ."""
    f32, bf16, other_seed = _loss_curve("float32", 0), _loss_curve("bfloat16", 0), _loss_curve("float32", 1)
    smooth = lambda c: np.convolve(c, np.ones(25) / 25, mode="valid")  # noqa: E731
    gap_bf16 = np.abs(smooth(bf16) - smooth(f32))[50:].mean()
    gap_seed = np.abs(smooth(other_seed) - smooth(f32))[50:].mean()
    assert bf16[-50:].mean() < 0.5 * bf16[:10].mean()  # it learns
    assert gap_bf16 <= max(gap_seed, 0.02), (gap_bf16, gap_seed)


@pytest.mark.parametrize("devices,chains", [(1, 4), pytest.param(8, 2, marks=pytest.mark.slow)])
def test_gradient_chains_give_the_full_batch_update(devices, chains):
    """A step split into gradient chains makes the update of the whole batch: the loss, gradient norm
    and new parameters match plain jax.value_and_grad of the batch's mean loss and optax's AdamW,
    computed here outside the trainer (1 device x 4 chains, and 8 devices x 2 chains)."""
    cfg = config.validate(
        config.PretrainConfig,
        dict(variant="Atto/7", batch_size=64, total_steps=10, warmup_steps=0, lr=1e-3, grad_clip_norm=None),
    )
    mesh = sharding.make_mesh([devices, 1], devices=jax.devices()[:devices])
    model = build.model(cfg, 10)
    tx = build.optimizer(cfg, build.schedule(cfg))
    trainer = loop.make_trainer(model, tx, mesh, image_shape=(28, 28, 1), chains=chains)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.standard_normal((64, 28, 28, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 64).astype(np.int32),
    }
    state = trainer.init_fn()
    params = jax.device_get(state.params)
    new, out = trainer.train_step(state, sharding.put_batch(batch, mesh))

    def loss(p):
        logits, _ = model.apply({"params": p}, batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    value, grads = jax.jit(jax.value_and_grad(loss))(params)  # jitted: eager op-by-op is slow, same maths
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    expect = optax.apply_updates(params, updates)
    np.testing.assert_allclose(out["loss"], value, rtol=1e-5)
    np.testing.assert_allclose(out["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), jax.device_get(new.params), expect
    )


def test_grad_chains_must_divide_the_batch_per_device():
    problems = []
    checks.devices(problems, [-1, 1], {"batch_size": 64}, grad_chains=3)  # 8 devices: 8 images each
    assert [p.field for p in problems] == ["grad_chains"] and "does not divide the batch per device" in problems[
        0
    ].message
    with pytest.raises(config.ConfigError, match="grad_chains"):
        config.validate(config.PretrainConfig, dict(variant="Femto/7", grad_chains=0))
