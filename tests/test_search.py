"""A sweep's `search:` (vitscale.search, vitscale.sweep): expansion and its refusals, the best run per point
chosen on the validation split alone, edges and the next value, and the learning-rate law against a
closed form."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from vitscale import config, metrics, runs, search, sweep


def write_sweep(tmp_path: Path, **spec) -> Path:
    doc = {
        "name": "s",
        "notebook": "pretrain",
        "base": {
            "dataset": "fashion_mnist",
            "train_examples": 256,
            "val_examples": 128,
            "total_steps": 8,
            "warmup_steps": 2,
        },
        "grid": {"variant": ["Atto/7", "Femto/7"]},
        "search": {"lr": [0.001, 0.002, 0.004]},
    }
    doc.update(spec)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in doc.items() if v is not None}))
    return path


def test_search_runs_every_grid_point_at_each_value(tmp_path):
    s = sweep.load(write_sweep(tmp_path))
    assert len(s.runs) == 2 * 3 and s.search == {"lr": [0.001, 0.002, 0.004]}
    pts = {}
    for r in s.runs:
        pts.setdefault(search.point_id(r.params, ["lr"]), set()).add(r.params["lr"])
    assert sorted(map(sorted, pts.values())) == [[0.001, 0.002, 0.004]] * 2
    # Widening the search keeps the ids (and so the finished runs) of the values already there.
    wider = sweep.load(write_sweep(tmp_path, search={"lr": [0.001, 0.002, 0.004, 0.008]}))
    assert {r.run_id for r in s.runs} < {r.run_id for r in wider.runs}


@pytest.mark.parametrize(
    "search_block,field,words",
    [
        ({"learning_rate": [0.1]}, "search.learning_rate", "is not a parameter"),
        ({"lr": []}, "search.lr", "at least one value"),
        ({"lr": 0.1}, "search.lr", "at least one value"),
        ({"variant": ["Atto/7"]}, "search.variant", "also a grid key"),
        (["lr"], "search", "must map"),
    ],
)
def test_a_bad_search_is_refused_naming_the_field(tmp_path, search_block, field, words):
    with pytest.raises(config.ConfigError) as e:
        sweep.load(write_sweep(tmp_path, search=search_block))
    assert any(p.field == field and words in p.message for p in e.value.problems), e.value.lines()


def test_a_search_needs_a_validation_split(tmp_path):
    path = write_sweep(tmp_path, base={"dataset": "fashion_mnist", "train_examples": 256, "warmup_steps": 2})
    with pytest.raises(config.ConfigError) as e:
        sweep.load(path)
    assert [p.field for p in e.value.problems] == ["search"] and "val_examples" in e.value.lines()[0]


def test_the_cli_refuses_a_bad_search_before_any_work(tmp_path, capsys):
    from vitscale import cli

    path = write_sweep(tmp_path, search={"lr": []})
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.lr" in err[0] and "at least one value" in err[0], err
    assert not out.exists()


class NoTestSplit(dict):
    """A row that fails the test if anything reads a test/ or fewshot/ metric from it."""

    def __getitem__(self, k):
        assert not str(k).startswith(("test/", "fewshot/")), f"read {k}"
        return super().__getitem__(k)

    def get(self, k, default=None):
        assert not str(k).startswith(("test/", "fewshot/")), f"read {k}"
        return super().get(k, default)


def row(point, lr, val_acc, val_loss, test_acc, **kw):
    return NoTestSplit(
        point=point,
        search={"lr": lr},
        run_id=f"{point}-{lr}",
        variant=point,
        num_params=kw.pop("num_params", 1000),
        **{metrics.VAL_ACC: val_acc, metrics.VAL_LOSS: val_loss, metrics.TEST_ACC: test_acc},
        **kw,
    )


def test_the_best_run_is_chosen_on_the_validation_split_and_never_reads_the_test_split():
    rows = [
        row("A", 0.001, 0.80, 0.50, 0.99),  # best on test, worse on validation
        row("A", 0.002, 0.85, 0.45, 0.70),
        row("A", 0.004, 0.85, 0.40, 0.60),  # tie on val/acc: the lower val/loss wins
        row("A", 0.008, float("nan"), float("nan"), 0.99),  # diverged: never chosen
        row("B", 0.001, 0.70, 0.6, 0.5),
        row("B", 0.002, 0.60, math.inf, 0.9),  # diverged
    ]
    best, choices = search.choose(rows, ["lr"])
    assert {b["run_id"] for b in best} == {"A-0.004", "B-0.001"}
    a, b = sorted(choices, key=lambda c: c.point)
    assert a.best == {"lr": 0.004} and a.at_edge == {"lr": None}  # 0.008 was tried, diverged
    assert b.best == {"lr": 0.001} and b.at_edge == {"lr": "low"}
    assert [v for v, _ in a.tried["lr"]] == [0.001, 0.002, 0.004, 0.008] and math.isinf(a.tried["lr"][-1][1])


def test_next_value_continues_the_grid_beyond_its_edge():
    assert search.next_value([0.001, 0.002, 0.004], "high") == pytest.approx(0.008)
    assert search.next_value([0.001, 0.002, 0.004], "low") == pytest.approx(0.0005)
    assert search.next_value([0, 50, 100], "high") == 150 and search.next_value([0, 50, 100], "low") == -50
    assert search.next_value([64, 128], "high") == 256


def _choices_from_law(a, b, sizes, grid, noise=0.0, seed=0):
    """Points whose validation error is a parabola in log lr around a * N^b (the closed form)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        opt = a * n**b
        for lr in grid:
            err = 0.1 + 0.02 * np.log(lr / opt) ** 2 + noise * rng.normal()
            rows.append(row(f"N{n}", lr, 1 - err, err, 0.5, num_params=n))
    return search.choose(rows, ["lr"])[1]


def test_the_rate_law_recovers_a_known_power_law_and_says_when_it_is_flat():
    grid = [2.0**k for k in range(-16, 0)]
    law = search.rate_law(_choices_from_law(0.5, -0.3, [1e4, 3e4, 1e5, 3e5, 1e6], grid))
    assert law.b == pytest.approx(-0.3, abs=0.02) and law.a == pytest.approx(0.5, rel=0.2)
    assert law.flat == "no" and law.b_interval[0] < -0.3 < law.b_interval[1]
    flat = search.rate_law(_choices_from_law(3e-3, 0.0, [1e4, 3e4, 1e5, 3e5, 1e6], grid, noise=1e-3))
    assert flat.flat == "yes" and abs(flat.b) < 0.05, flat
    assert "three or more" in search.rate_law(_choices_from_law(3e-3, 0.0, [1e4, 3e4], grid))


def test_collect_groups_a_searched_sweep_folder(tmp_path):
    """runs.collect tags each run of a searched sweep folder with its point and searched values."""
    s = sweep.load(write_sweep(tmp_path))
    out = tmp_path / "out"
    for i, r in enumerate(s.runs):
        (out / r.run_id).mkdir(parents=True)
        (out / r.run_id / "params.yaml").write_text(yaml.safe_dump(r.params))
        summary = {"kind": "pretrain", "variant": r.params["variant"], "num_params": 1, "batch_size": 1}
        summary |= {"total_steps": 8, "images_seen": 8, "train_flops": 1.0, "final": {metrics.VAL_ACC: i / 10}}
        runs.write_json(out / r.run_id / "summary.json", summary)
    sweep.record_search(s, out)
    rows = runs.collect(out)
    assert {r["search"]["lr"] for r in rows} == {0.001, 0.002, 0.004} and len({r["point"] for r in rows}) == 2


def test_the_planner_writes_the_rate_the_law_predicts(tmp_path):
    """A searched study whose validation error is a parabola in log lr around 0.01 x (N/1e4)^-0.5 (closed form):
    plan.rate_of gives each planned run that law's rate, within the grid's resolution."""
    from vitscale import plan

    s = sweep.load(
        write_sweep(
            tmp_path, grid={"variant": ["Atto/7", "Femto/7", "Pico/7"]}, search={"lr": [0.001 * 2**k for k in range(8)]}
        )
    )
    out = tmp_path / "out"
    sizes = {"Atto/7": 1e4, "Femto/7": 4e4, "Pico/7": 1.6e5}
    for r in s.runs:
        n, lr = sizes[r.params["variant"]], r.params["lr"]
        err = 0.1 + 0.02 * np.log(lr / (0.01 * (n / 1e4) ** -0.5)) ** 2
        (out / r.run_id).mkdir(parents=True)
        (out / r.run_id / "params.yaml").write_text(yaml.safe_dump(r.params))
        summary = {"kind": "pretrain", "variant": r.params["variant"], "num_params": n, "batch_size": 1}
        summary |= {"total_steps": 8, "images_seen": 8, "train_flops": 1.0}
        summary["final"] = {metrics.VAL_ACC: 1 - err, metrics.VAL_LOSS: err}
        runs.write_json(out / r.run_id / "summary.json", summary)
    sweep.record_search(s, out)
    planned = [{"_params": 1e4}, {"_params": 1e6}]
    line = plan.rate_of(out, {"params": s.runs[0].params}, planned)
    assert "rate law" in line and "standard parametrization" in line, line
    assert planned[0]["lr"] == pytest.approx(0.01, rel=0.1) and planned[1]["lr"] == pytest.approx(0.001, rel=0.15)
