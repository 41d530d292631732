"""Fine-tuning pieces: checkpoint loading, head and position-embedding surgery, the held-out split,
the fine-tuning recipe."""

import os
import shutil

import jax
import numpy as np
import pytest
import yaml

from vitscale import build, checkpoints, config, pretrained, runs, sharding
from vitscale.data import sources
from vitscale.models import vit
from vitscale.transfer import finetune, program

PRE = dict(name="tiny", dataset="fashion_mnist", variant="Atto/7", total_steps=6, batch_size=32, warmup_steps=2)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh([-1, 1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mesh):
    """A pretraining run folder holding one checkpoint (a random init saved at step 6, no training)."""
    run = tmp_path_factory.mktemp("pre")
    cfg = config.validate(config.PretrainConfig, PRE)
    (run / "params.yaml").write_text(config.dump(cfg))
    trainer = build.trainer(cfg, mesh, 10, seed=3)
    state = trainer.init_fn().replace(step=jax.numpy.asarray(6, jax.numpy.int32))
    head = state.params["head"]["kernel"]  # as if trained: a head that is not zero
    state.params["head"]["kernel"] = jax.device_put(np.full(head.shape, 0.5, np.float32), head.sharding)
    checkpoints.save(checkpoints.manager(run / "ckpt"), 6, state, {"data_position": None})
    return run, jax.device_get(state.params)


def test_load_pretrained_restores_the_newest_checkpoint(run_dir, mesh):
    run, saved = run_dir
    m = pretrained.load_run(run, mesh)
    assert m.step == 6 and m.name == "pretrained" and m.cfg.variant == "Atto/7" and m.source == str(run.resolve())
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(m.params), saved)
    feats = m.features(jax.numpy.zeros((8, 28, 28, 1)))
    assert feats.shape == (8, 32)


def test_new_head_is_zero_initialised_with_the_new_class_count(run_dir):
    _, saved = run_dir
    model = vit.make_model("Atto/7", num_classes=7)
    params = pretrained.fit(saved, model, (28, 28, 1))
    assert params["head"]["kernel"].shape == (32, 7) and params["head"]["bias"].shape == (7,)
    assert not np.any(params["head"]["kernel"]) and not np.any(params["head"]["bias"])
    assert np.any(saved["head"]["kernel"])  # the pretrained head was not zero: it was replaced
    np.testing.assert_array_equal(params["embedding"]["kernel"], saved["embedding"]["kernel"])
    np.testing.assert_array_equal(params["pos_embedding"], saved["pos_embedding"])  # same resolution: kept
    logits, _ = jax.jit(model.apply)({"params": params}, np.ones((2, 28, 28, 1), np.float32))
    assert logits.shape == (2, 7) and not np.any(logits)  # a zero head predicts uniformly at the start


def test_position_embedding_is_resized_on_a_resolution_change(run_dir):
    _, saved = run_dir
    model = vit.make_model("Atto/7", num_classes=10)
    params = pretrained.fit(saved, model, (42, 42, 1))  # 4x4 patches of 7 px -> 6x6
    old, new = np.asarray(saved["pos_embedding"]), np.asarray(params["pos_embedding"])
    assert old.shape == (1, 16, 32) and new.shape == (1, 36, 32)
    np.testing.assert_allclose(new, vit.resize_posemb(old, (6, 6)), rtol=1e-6)
    grid_old, grid_new = old.reshape(4, 4, 32), new.reshape(6, 6, 32)
    for (i, j), (k, m) in [((0, 0), (0, 0)), ((3, 3), (5, 5)), ((0, 3), (0, 5))]:  # corners line up
        np.testing.assert_allclose(grid_new[k, m], grid_old[i, j], rtol=1e-5)
    logits, _ = jax.jit(model.apply)({"params": params}, np.ones((1, 42, 42, 1), np.float32))
    assert logits.shape == (1, 10)


def test_transfer_params_names_a_mismatch():
    small = jax.eval_shape(lambda: vit.make_model("Atto/7", 10).init(jax.random.key(0), np.zeros((1, 28, 28, 1))))
    small = small["params"]
    wider = vit.ViT(num_classes=10, patch_size=7, width=48, depth=2, mlp_dim=128, num_heads=2)
    with pytest.raises(ValueError, match=r"parameter \S+: checkpoint shape .*32.* does not fit the model's .*48"):
        pretrained.fit(small, wider, (28, 28, 1))
    with pytest.raises(ValueError, match="lacks parameters.*encoderblock_2"):
        pretrained.fit(small, vit.make_model("Femto/7", 10), (28, 28, 1))


def _indexed_split(n: int, sorted_by_class: bool = False) -> sources.Split:
    labels = np.arange(n, dtype=np.int32)  # each label is the example's index: membership is easy to check
    images = (np.arange(n) % 256).astype(np.uint8).reshape(n, 1, 1, 1)
    return sources.Split("s", images, labels, num_classes=n)


def test_holdout_is_two_percent_disjoint_and_deterministic():
    split = _indexed_split(4000)
    keep, hold = finetune.holdout_split(split, 0.02)
    assert len(hold) == 80 and len(keep) == 3920
    assert not set(keep.labels) & set(hold.labels)
    assert sorted({*keep.labels, *hold.labels}) == list(range(4000))
    keep2, hold2 = finetune.holdout_split(split, 0.02)
    np.testing.assert_array_equal(hold.labels, hold2.labels)
    np.testing.assert_array_equal(keep.images, keep2.images)
    assert hold.labels.max() > 80 and hold.labels.min() < 3920  # spread over the split, not its first or last 2%
    with pytest.raises(ValueError, match="empty"):
        finetune.holdout_split(_indexed_split(10), 0.02)


def test_holdout_of_a_real_split_holds_every_class():
    split = sources.load_split("mnist_5k", "train")
    keep, hold = finetune.holdout_split(split, 0.02)
    assert (len(keep), len(hold)) == (3920, 80)
    assert len(np.unique(hold.labels)) == 10


def test_finetune_recipe_is_sgd_without_weight_decay(run_dir, mesh):
    run, _ = run_dir
    cfg = config.validate(
        config.TransferConfig,
        dict(
            pretrained=str(run),
            fewshot_datasets=[],
            finetune_datasets=[],
            finetune_resolution=42,
            finetune_steps=40,
            warmup_steps=5,
            finetune_batch_size=16,
        ),
    )
    pre = pretrained.read_pretrain_config(run)
    c = finetune.setup(pre, cfg, 10, 0.03, mesh)
    assert c.image_shape == (42, 42, 1) and c.trainer.model.head_bias_init == 0.0
    assert (c.spec.total_steps, c.spec.batch_size) == (40, 16)
    # Cosine after a linear warmup of 5 steps to the lr.
    assert float(c.schedule(0)) == 0.0 and float(c.schedule(5)) == pytest.approx(0.03)
    assert float(c.schedule(40)) == pytest.approx(0.0, abs=1e-9)
    # SGD without weight decay: zero gradients leave the (non-zero) parameters where they are ...
    params = c.trainer.init_fn().params
    zero = jax.tree.map(np.zeros_like, params)
    tx_state = c.trainer.tx.init(params)
    for _ in range(6):
        updates, tx_state = c.trainer.tx.update(zero, tx_state, params)
    assert all(not np.any(u) for u in jax.tree.leaves(updates))
    # ... and a gradient g after those 6 steps moves them by -lr(6) g (momentum of zeros so far).
    g = jax.tree.map(np.ones_like, params)
    updates, _ = c.trainer.tx.update(g, tx_state, params)
    lr6 = float(c.schedule(6))
    clip = min(1.0, 1.0 / float(np.sqrt(sum(x.size for x in jax.tree.leaves(g)))))  # global norm clipped to 1
    for u in jax.tree.leaves(updates):
        np.testing.assert_allclose(u, -lr6 * clip, rtol=1e-2)


def test_find_run_resolves_relative_to_the_repository(root):
    name = f".test-find-run-{os.getpid()}"
    run = root / "outputs" / name
    (run / "ckpt" / "1").mkdir(parents=True)
    (run / "params.yaml").write_text(yaml.safe_dump(PRE))
    try:
        assert runs.find_run(f"outputs/{name}") == run.resolve()
    finally:
        shutil.rmtree(run)


def test_params_yaml_of_the_run_is_checked(tmp_path):
    (tmp_path / "ckpt" / "5").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PRE, "variant": "Nope/7"}))
    with pytest.raises(config.ConfigError, match="(?s)params.yaml is not a valid pretraining parameter file.*Nope/7"):
        pretrained.read_pretrain_config(runs.find_run(tmp_path))


@pytest.mark.slow
def test_keep_the_best_grid_run_from_a_random_init_and_resume(tmp_path, mesh):
    cfg = config.validate(
        config.TransferConfig,
        dict(
            pretrained="random",
            random_model={"variant": "Atto/7"},
            fewshot_datasets=[],
            finetune_datasets=["sklearn_digits"],
            finetune_steps=2,
            finetune_batch_size=16,
            lr_grid=[0.05],
            warmup_steps=0,
            retrain=False,
            eval_every=2,
            log_every=1,
        ),
    )
    models = program.load_models(cfg, mesh)
    assert [m.name for m in models] == ["random"] and models[0].step == 0
    r = finetune.finetune(models, "sklearn_digits", cfg, tmp_path, mesh)["random"]
    assert (r["retrained"], r["best_lr"], r["train_images"], r["holdout_images"]) == (False, 0.05, 1271, 26)
    # Accuracies are float32 counts over the splits' own sizes: 500 test and 26 held-out images.
    assert r["test_images"] == 500 and abs(r["test/acc"] * 500 - round(r["test/acc"] * 500)) < 1e-3
    assert abs(r["grid"][0]["val/acc"] * 26 - round(r["grid"][0]["val/acc"] * 26)) < 1e-3
    assert sorted(p.name for p in (tmp_path / "random").iterdir()) == ["lr_0.05"]  # no retrained run
    log = (tmp_path / "random" / "lr_0.05" / "metrics.jsonl").read_text()
    again = finetune.finetune(models, "sklearn_digits", cfg, tmp_path, mesh)["random"]  # finished: read back
    assert (tmp_path / "random" / "lr_0.05" / "metrics.jsonl").read_text() == log
    assert again["grid"][0]["val/acc"] == r["grid"][0]["val/acc"] and again["test/acc"] == r["test/acc"]


def test_the_best_grid_run_has_the_highest_val_accuracy_then_the_lowest_val_loss():
    rows = [
        {"val/acc": 0.90, "val/loss": 0.40, "diverged": False},
        {"val/acc": None, "val/loss": None, "diverged": True},
        {"val/acc": 0.92, "val/loss": 0.50, "diverged": False},
        {"val/acc": 0.92, "val/loss": 0.30, "diverged": False},  # same accuracy, lower loss: this one
        {"val/acc": 0.92, "val/loss": 0.35, "diverged": False},
    ]
    best = None
    for row in rows:
        if finetune.beats(row, best):
            best = row
    assert best is rows[3]
    assert not finetune.beats(rows[1], None)  # a diverged run is never the best, even alone
