"""A group of runs trained as one program (vitscale.group) against the same runs trained alone
(train.run, the path every run took before groups): each copy's metrics.jsonl and checkpoints equal
its run's, also after a crash and resume; a copy that diverges stops alone; bad `group:` values are
refused before anything runs.

Tolerance (float32): a copy's products are batched over the copies, so XLA may sum in another order.
Every logged value (losses, accuracies, gradient norms, rates) agrees within rtol 2e-5 (measured: at
most 2e-6 after 6 steps). Each checkpoint's whole state (parameters and optimizer moments, as one
vector) within 1e-4 of its norm, ||group - alone|| <= 1e-4 ||alone||, and each array within 1e-2 of
its own (measured: 2.5e-5 for a weight matrix, 1.2e-4 and 1.5e-3 for second moments, the squares of
gradients that cancel to near 0). Not element by element: the optimizer divides a gradient by its
own size, so an element whose gradient is near 0 moves by up to lr whatever sign its rounding gives
it (measured: 1.4e-4 on 1 of 3072 weights at lr 3e-3).

The tests that train take 1-3 minutes on a shared 2-core machine (two runs alone, then groups of 2
and 3 compiled on the tests' 8 devices): they are in the long tier (make test-long)."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from vitscale import build, config, group, loop, metrics, runs, sharding, stacked, sweep, train

BASE = dict(
    dataset="fashion_mnist",
    train_examples=512,
    test_split="test[:256]",
    variant="Atto/7",
    batch_size=32,  # 4 images on each of the tests' 8 devices
    total_steps=6,
    warmup_steps=2,
    eval_every=3,
    log_every=1,
    checkpoint_every=2,
    eval_batch_size=256,
    dropout=0.1,  # each copy's own dropout keys
    crop_padding=2,
    flip=True,  # each copy's own random crops and flips
    schedule="rsqrt",
    timescale=10,
    cooldown_branches=[{"start": 4, "steps": 2}],  # trained alone by each run's own program, after the group
)
# The four keys a group's copies differ in; weight_decay 0 gives an optimizer chain of another structure.
COPIES = [dict(name="a", lr=1e-3), dict(name="b", lr=3e-3, weight_decay=0.0, seed=1, warmup_steps=1)]
# Copies whose optimizers share one chain (weight decays both non-zero): one vmapped update (build.copies_optimizer).
SHARED = [COPIES[0], dict(name="c", lr=2e-3, weight_decay=0.5, seed=2, warmup_steps=1)]
RTOL_METRICS = 2e-5
RTOL_ARRAY = 1e-2  # of each saved array's norm
RTOL_STATE = 1e-4  # of the norm of the whole saved state


def cfg_of(**overrides) -> config.PretrainConfig:
    return config.validate(config.PretrainConfig, {**BASE, **overrides})


def members_in(folder, copies=COPIES) -> list[group.Member]:
    members = [group.Member(cfg_of(**c), folder / c["name"]) for c in copies]
    for m in members:
        runs.claim(m.out, m.cfg)
    return members


def saved(run_dir) -> dict[int, dict]:
    """Every checkpoint of a run folder as {step: the saved state, read without a target}."""
    mngr = ocp.CheckpointManager(run_dir.absolute() / "ckpt")
    out = {
        s: mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"] for s in mngr.all_steps()
    }
    mngr.close()
    return out


def assert_same_run(got, want) -> None:
    """metrics.jsonl row for row (timings aside) and every checkpoint, within the stated tolerance."""
    rows = [runs.read_metrics(d / "metrics.jsonl") for d in (got, want)]
    assert [sorted(r) for r in rows[0]] == [sorted(r) for r in rows[1]]
    for g, w in zip(*rows):
        for k in set(g) - metrics.TIMING:
            assert g[k] == pytest.approx(w[k], rel=RTOL_METRICS, abs=1e-7), (got.name, g["step"], k)
    ckpts = [saved(d) for d in (got, want)]
    assert sorted(ckpts[0]) == sorted(ckpts[1])
    for step in ckpts[1]:
        assert jax.tree.structure(ckpts[0][step]) == jax.tree.structure(ckpts[1][step])
        pairs = [
            (np.asarray(g, np.float64), np.asarray(w, np.float64))
            for g, w in zip(*map(jax.tree.leaves, (ckpts[0][step], ckpts[1][step])))
        ]
        worst = max(relative_off(g, w) for g, w in pairs)
        whole = relative_off(
            np.concatenate([g.ravel() for g, _ in pairs]), np.concatenate([w.ravel() for _, w in pairs])
        )
        print(f"{got.name} step {step}: worst array off by {worst:.1e} of its norm, the whole state by {whole:.1e}")
        assert worst <= RTOL_ARRAY and whole <= RTOL_STATE, (got.name, step, worst, whole)


def relative_off(g: np.ndarray, w: np.ndarray) -> float:
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30))


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The reference: each run trained alone through train.run."""
    root = tmp_path_factory.mktemp("alone")
    for c in [*COPIES, *SHARED[1:]]:
        train.run(cfg_of(**c), root / c["name"])
    return root


def test_the_batches_are_each_runs_own():
    cfgs = [cfg_of(**c) for c in COPIES]
    train_split, _, _, pipe = train.load_data(cfgs[0])
    stacked = group.batches(cfgs, train_split, pipe, step=3)
    own = [build.batches(c, train_split, pipe)(3) for c in cfgs]
    for _ in range(2):
        batch, parts = next(stacked), [next(o) for o in own]
        for k in ("image", "label"):
            np.testing.assert_array_equal(batch[k], np.stack([p[k] for p in parts]))


@pytest.mark.long
def test_each_copy_equals_its_run_trained_alone(alone, tmp_path):
    members = members_in(tmp_path)
    assert group.train(members) == members
    for m in members:
        assert_same_run(m.out, alone / m.cfg.name)
    # The run's own program (what its notebook calls) finds the main run finished: no step of it trained
    # again; it trains the cooldown branch alone from the group's checkpoint at the branch's start.
    for m in members:
        before = (m.out / "metrics.jsonl").read_text()
        summary = train.run(m.cfg, m.out)
        assert (m.out / "metrics.jsonl").read_text() == before and summary["group_copies"] == 2
        assert_same_run(m.out / "branches" / "cooldown_4+2", alone / m.cfg.name / "branches" / "cooldown_4+2")
        final = runs.read_json(alone / m.cfg.name / "summary.json")["final"]
        assert summary["final"] == pytest.approx(final, rel=RTOL_METRICS)


@pytest.mark.long
def test_copies_sharing_one_optimizer_equal_their_runs_trained_alone(alone, tmp_path, capsys):
    assert build.copies_optimizer([cfg_of(**c) for c in SHARED]) is not None  # one vmapped update
    members = members_in(tmp_path, SHARED)
    assert group.train(members) == members
    printed = capsys.readouterr().out  # a batch run has no bar: each copy's line per evaluation, as alone
    assert all(f"{m.cfg.name} step {s}/6 (" in printed for m in members for s in (3, 6)), printed
    for m in members:
        assert_same_run(m.out, alone / m.cfg.name)


def test_one_optimizer_serves_copies_that_differ_in_schedule_and_weight_decay_only():
    """Copy i's update through the shared chain equals its own optimizer's (build.optimizer, the chain
    it trains with alone), step by step on random gradients; chains of another shape are not shared."""
    cfgs = [cfg_of(**c) for c in SHARED]
    tx = build.copies_optimizer(cfgs)
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((8, 4), np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    for i, c in enumerate(cfgs):
        own, shared = build.optimizer(c, build.schedule(c)), tx(jax.numpy.asarray(i))
        s_own, s_shared = own.init(params), shared.init(params)
        for _ in range(4):
            g = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
            u_own, s_own = own.update(g, s_own, params)
            u_shared, s_shared = shared.update(g, s_shared, params)
            for a, b in zip(jax.tree.leaves(u_shared), jax.tree.leaves(u_own)):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    assert build.copies_optimizer([cfgs[0], cfg_of(weight_decay=0.0)]) is None  # the decay drops out of one chain
    assert build.copies_optimizer([cfgs[0], cfg_of(optimizer="sgd")]) is None
    assert build.copies_optimizer([cfgs[0], cfg_of(grad_clip_norm=None)]) is None


@pytest.mark.parametrize(
    "side_by_side, dropout",
    [(True, 0.0), (True, 0.1), (False, 0.0)],
    ids=["side by side (CPU)", "side by side, dropout", "vmap (GPU, TPU)"],
)
def test_both_ways_of_a_groups_gradients_give_each_copy_its_runs(side_by_side, dropout):
    """Each copy's loss and gradient, side by side or vmapped, equal its run's alone (loop.gradient_fn with
    the run's own chains) on one device, where a batch of 32 gives a run 2 gradient chains: side by side the
    2 copies take 1 each (the same mean to float32 rounding), unless dropout draws its masks per chain."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), sharding.AXES)
    cfg = cfg_of(batch_size=32, dropout=dropout)
    model = build.trainer(cfg, mesh, 10).model
    alone = jax.jit(loop.gradient_fn(model, loop.LOSSES["softmax_xent"], None, mesh))
    n = 2
    grad = loop.gradient_fn(model, loop.LOSSES["softmax_xent"], None, mesh, n if side_by_side and not dropout else 1)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 32, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, (n, 32)).astype(np.int32)
    keys = jax.random.split(jax.random.key(0), n)
    params = [model.init(jax.random.key(i), images[0, :2])["params"] for i in range(n)]
    stacked_params = jax.tree.map(lambda *x: np.stack(x), *params)
    losses, grads = jax.jit(stacked.copies_gradients(grad, side_by_side))(stacked_params, images, labels, keys)
    for i in range(n):
        loss, want = alone(params[i], images[i], labels[i], keys[i])
        got = [g[i] for g in jax.tree.leaves(grads)]
        assert float(losses[i]) == pytest.approx(float(loss), rel=1e-6)
        for g, w in zip(got, jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(np.abs(w).max()))


@pytest.mark.long
def test_a_crashed_group_resumes_to_the_same_runs(alone, tmp_path, monkeypatch):
    members = members_in(tmp_path)
    real = group.batches

    def crashing(*args, **kwargs):
        stream = real(*args, **kwargs)
        for _ in range(5):  # the crash comes after step 5; the newest checkpoint is step 4's
            yield next(stream)
        raise RuntimeError("killed")

    monkeypatch.setattr(group, "batches", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        group.train(members)
    assert sorted(saved(members[0].out)) == [2, 4]
    monkeypatch.setattr(group, "batches", real)
    assert group.train(members) == members  # resumes both copies from step 4
    for m in members:
        assert_same_run(m.out, alone / m.cfg.name)


@pytest.mark.long
def test_a_diverging_copy_stops_alone_and_its_run_records_it(alone, tmp_path, capsys):
    copies = [*COPIES, dict(name="x", lr=1e30, grad_clip_norm=None)]  # the first update overflows float32
    members = members_in(tmp_path, copies)
    assert group.train(members) == members[:2]
    # Step 1's rate is 0 (warmup), step 2's update overflows: the loss of step 3 is not finite.
    assert "x: loss is nan at step 3; the last good checkpoint is at step 2" in capsys.readouterr().out
    for m in members[:2]:  # the others never saw it
        assert_same_run(m.out, alone / m.cfg.name)
    assert sorted(saved(members[2].out)) == [2]  # nothing written after the divergence
    with pytest.raises(loop.NonFiniteLoss, match="at step 3"):  # its own run (the sweep marks it diverged)
        train.run(members[2].cfg, members[2].out)


def test_plan_groups_runs_that_differ_only_in_the_free_keys():
    cfgs = {f"lr{i}": cfg_of(lr=0.001 * (i + 1), seed=i) for i in range(9)}
    cfgs["pico"] = cfg_of(variant="Pico/7")  # another model: alone
    cfgs["from_file"] = cfg_of(init_from="weights.npz")  # starts from a file: alone
    groups = group.plan(cfgs, size=8)
    assert sorted(map(len, groups)) == [4, 5] and sorted(sum(groups, [])) == [f"lr{i}" for i in range(9)]
    assert group.plan({"a": cfg_of(), "b": cfg_of(batch_size=64)}) == []


@pytest.mark.parametrize(
    "value,notebook,words",
    [
        (1, "pretrain", "1 is not accepted; accepted: true"),
        ("yes", "pretrain", "'yes' is not accepted"),
        (True, "transfer", "groups pretraining runs only"),
    ],
)
def test_a_bad_group_value_is_refused_before_anything_runs(tmp_path, value, notebook, words):
    base = {"pretrained": "random", "dataset": "fashion_mnist"} if notebook == "transfer" else BASE
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"notebook": notebook, "base": base, "grid": {"lr": [1e-3]}, "group": value}))
    with pytest.raises(config.ConfigError) as e:
        sweep.load(path)
    assert e.value.problems[0].field == "group" and words in e.value.problems[0].message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing written


def test_group_values_that_are_accepted():
    assert sweep.group_size(True, "pretrain") == group.DEFAULT_SIZE and sweep.group_size(4, "pretrain") == 4
    assert sweep.group_size(False, "pretrain") == 0 and sweep.group_size(False, "transfer") == 0
    assert group.default_size() == 0  # unset, a CPU trains every run alone (no faster grouped, benchmarks/README.md)
