"""Training behaviour: the loss falls on a fixed batch; losses match their closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitscale import config, data, optim, sharding, train


def test_sigmoid_and_softmax_xent_closed_forms():
    logits = jnp.array([[2.0, -1.0, 0.5]])
    labels = jnp.array([2])
    z = np.array([2.0, -1.0, 0.5], np.float64)
    soft = -(z[2] - np.log(np.exp(z).sum()))
    sig = -(np.log(1 / (1 + np.exp(-z[2]))) + np.log(1 - 1 / (1 + np.exp(-z[0]))) + np.log(1 - 1 / (1 + np.exp(-z[1]))))
    np.testing.assert_allclose(train.softmax_xent(logits, labels)[0], soft, rtol=1e-6)
    np.testing.assert_allclose(train.sigmoid_xent(logits, labels)[0], sig, rtol=1e-6)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    cfg = config.validate(config.PretrainConfig, dict(variant="Atto/7", batch_size=32, total_steps=30, warmup_steps=0,
                                                      lr=3e-3, schedule="constant"))
    split = data.load_split("fashion_mnist", "train[:32]")
    batch = next(data.train_batches(split, train.input_pipeline(cfg), global_batch=32, seed=0))
    mesh = sharding.make_mesh(cfg.mesh)
    model = train.build_model(cfg, 10)
    trainer = train.make_trainer(model, train.build_optimizer(cfg, train.build_schedule(cfg)), mesh,
                                 image_shape=(28, 28, 1))
    state = trainer.init_fn()
    placed = sharding.put_batch(batch, mesh)
    losses = []
    for _ in range(30):
        state, out = trainer.train_step(state, placed)
        losses.append(float(out["loss"]))
    np.testing.assert_allclose(losses[0], np.log(10), rtol=1e-3)  # zero-init head: uniform prediction
    assert losses[-1] < 0.5 * losses[0]
    assert int(state["step"]) == 30
