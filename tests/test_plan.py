"""The planner and the CSV front door (issue 27): `vitscale plan` on a study writes an IsoFLOP sweep
file that `vitscale sweep` accepts and that spends the budget; `vitscale analyze FILE.csv` writes the
allocation report; a bad CSV is exit code 2 with nothing written."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vitscale import cli, config, files, plan, runs, sweep
from vitscale.models import flops, vit

DATA = Path(__file__).parent / "data"
TRUE = {"E": 0.05, "A": 4.0, "B": 2.0, "alpha": 0.5, "beta": 0.5}


def _law(n, d):
    return TRUE["E"] + TRUE["A"] * n ** -TRUE["alpha"] + TRUE["B"] * d ** -TRUE["beta"]


def fake_study(root: Path, variants=("Atto/7", "Femto/7", "Pico/7"), seed=0) -> Path:
    """A finished study without training: run folders as train.py writes them (params.yaml,
    summary.json with cooldown branches), test accuracy from a known law with 1% noise."""
    rng = np.random.default_rng(seed)
    base = config.load_yaml(DATA / "tiny_sweep.yaml")["base"]
    for variant in variants:
        cfg = config.validate(config.PretrainConfig, {**base, "variant": variant, "total_steps": 200,
                                                       "cooldown_steps": 40, "cooldown_branches": []})  # fmt: skip
        params = cfg.model_dump(mode="json")
        model = vit.make_model(variant, 10, pool_type=cfg.pool_type)
        n = flops.count_params(model, (28, 28, 1))
        fwd = flops.forward_flops(model, (28, 28, 1))

        def point(steps, n=n, fwd=fwd, cfg=cfg):
            seen = steps * cfg.batch_size
            err = _law(n, seen) * np.exp(rng.normal(0, 0.01))
            return {"images_seen": seen, "train_flops": 3 * fwd * seen, "total_steps": steps}, {"test/acc": 1 - err}

        main, final = point(200)
        branches = []
        for steps in (25, 50, 100):
            b, m = point(steps)
            branches.append({"name": f"cooldown_{steps}", "metrics": m, **b})
        run = root / variant.replace("/", "-")
        files.atomic_write_text(run / "params.yaml", yaml.safe_dump({**params, "name": run.name}))
        summary = {"kind": "pretrain", "variant": variant, "num_classes": 10, "num_params": n,
                   "forward_flops_per_image": fwd, "batch_size": cfg.batch_size, "train_examples": 1_000_000,
                   "final": final, "branches": branches, **main}  # fmt: skip
        runs.write_json(run / "summary.json", summary)
    return root


def test_plan_writes_an_isoflop_sweep_that_spends_the_budget(tmp_path):
    study = fake_study(tmp_path / "study")
    budget = 2e11
    res = plan.run(study, budget, out=tmp_path / "plan.yaml", law=plan.LawSpec(n_bootstrap=10))
    assert res["sweep_file"] == tmp_path / "plan.yaml"
    spec = sweep.load(res["sweep_file"])  # validates every run, as `vitscale sweep` does
    assert len(spec.runs) >= 5
    sizes = set()
    for r in spec.runs:
        p = r.params
        model = vit.make_model(p["variant"], 10, pool_type=p["pool_type"])
        spent = 3 * flops.forward_flops(model, (28, 28, 1)) * p["batch_size"] * p["total_steps"]
        assert spent == pytest.approx(budget, rel=0.01)
        assert p["cooldown_branches"] == [] and p["schedule"] == "rsqrt"
        sizes.add(flops.count_params(model, (28, 28, 1)))
    assert len(sizes) == len(spec.runs)
    p = res["plan"]
    assert min(sizes) <= p["N"] <= max(sizes) or "one-sided" in res["text"]
    assert "N* =" in res["text"] and "predicted" in res["text"]


def test_plan_cli_on_a_csv_prints_the_optimum_and_refuses_out(tmp_path, capsys):
    n, d = (v.ravel() for v in np.meshgrid(np.logspace(6, 8, 5), np.logspace(7, 10, 6)))
    pd.DataFrame({"params": n, "images_seen": d, "error": _law(n, d)}).to_csv(tmp_path / "runs.csv", index=False)
    assert cli.main(["plan", str(tmp_path / "runs.csv"), "--budget", "1e19"]) == 0
    out = capsys.readouterr().out
    assert "N* =" in out and "C = 6 N D" in out
    # the closed form of the known law (alpha = beta = 1/2: N* = (A/B) sqrt(C/6))
    n_star = float(out.split("N* = ")[1].split()[0])
    assert n_star == pytest.approx(TRUE["A"] / TRUE["B"] * np.sqrt(1e19 / 6), rel=0.05)
    assert cli.main(["plan", str(tmp_path / "runs.csv"), "--budget", "1e19", "--out", str(tmp_path / "p.yaml")]) == 2
    assert not (tmp_path / "p.yaml").exists()


def test_analyze_csv_writes_report_and_allocation_summary(tmp_path):
    df = pd.read_csv(DATA / "chinchilla_epoch_svg_extracted_data.csv").sort_values("loss").iloc[:-5]
    table = pd.DataFrame({"params": df["Model Size"], "tokens": df["Training FLOP"] / (6 * df["Model Size"]),
                          "loss": df["loss"]})  # fmt: skip
    table.to_csv(tmp_path / "chinchilla.csv", index=False)
    assert cli.main(["analyze", str(tmp_path / "chinchilla.csv"), "--out", str(tmp_path / "rep")]) == 0
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())["allocation"]
    for key in ("E", "A", "B", "alpha", "beta", "a", "intervals"):
        assert key in s["joint"]
    assert s["joint"]["alpha"] == pytest.approx(0.3473, abs=1e-3)
    assert set(s["isoflop"]) >= {"a", "interval", "budgets"} and set(s["envelope"]) >= {"a", "interval"}
    assert s["k"] == 6.0 and not s["k_given"]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Allocation" in html and "extrapolates" in html


BAD = {
    "missing column": ("params,images_seen\n" + "1,2\n" * 8, "error or loss"),
    "non-numeric": ("params,images_seen,error\n" + "1e6,1e8,0.5\n" * 5 + "1e6,lots,0.5\n", "images_seen: row 6"),
    "non-positive": ("params,tokens,loss\n" + "1e6,1e8,0.5\n" * 6 + "-3,1e8,0.5\n", "params: row 7"),
    "too few rows": ("params,images_seen,error\n" + "1e6,1e8,0.5\n" * 3, "rows"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_csv_is_exit_2_naming_column_and_row_with_nothing_written(tmp_path, capsys, case):
    text, where = BAD[case]
    (tmp_path / "bad.csv").write_text(text)
    assert cli.main(["analyze", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'bad.csv'}: ") and where in err[0]
    assert not (tmp_path / "rep").exists()
    assert cli.main(["plan", str(tmp_path / "bad.csv"), "--budget", "1e18"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


@pytest.mark.long  # five planned runs through papermill: make test-long
def test_tiny_planned_sweep_runs_end_to_end(tmp_path):
    """plan on a study -> sweep file -> `vitscale sweep` runs every planned run to its budget."""
    study = fake_study(tmp_path / "study")
    micro = flops.forward_flops(vit.make_model("Micro/7", 10), (28, 28, 1))
    budget = 3 * micro * 32 * 40  # 40 steps of the largest candidate (Micro/7), ~2,000 of Atto/7
    assert cli.main(["plan", str(study), "--budget", repr(budget), "--out", str(tmp_path / "plan.yaml")]) == 0
    spec = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    spec["base"] |= {"test_split": "test[:64]", "eval_batch_size": 64, "log_every": 100}
    for r in spec["runs"]:
        r["eval_every"] = r["total_steps"]  # one evaluation, at the end
    spec["analysis"] = False
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "planned"
    assert cli.main(["sweep", str(tmp_path / "plan.yaml"), "--out", str(out)]) == 0
    done = [runs.read_json(p) for p in out.glob("*/summary.json")]
    assert len(done) >= 5
    for s in done:
        assert s["train_flops"] == pytest.approx(budget, rel=0.01)


def test_recommend_names_the_ladder_size_nearest_n_star_and_its_steps(tmp_path):
    """The next run: the family's size nearest N* in log parameters (brute force over the table), the
    steps that spend the budget with it (3 x forward FLOPs x batch), the plan's error and intervals."""
    study = fake_study(tmp_path / "study")
    res = plan.run(study, 2e11, out=tmp_path / "plan.yaml", law=plan.LawSpec(n_bootstrap=10))
    p = res["plan"]
    rec = plan.recommend(study, p)
    sizes = {f"{name}/7": flops.count_params(vit.make_model(f"{name}/7", 10), (28, 28, 1)) for name in vit.VARIANTS}
    nearest = min(sizes, key=lambda v: abs(np.log(sizes[v] / p["N"])))
    assert rec["variant"] == nearest and rec["params"] == sizes[nearest]
    fwd = flops.forward_flops(vit.make_model(nearest, 10), (28, 28, 1))
    assert rec["total_steps"] * 3 * fwd * 32 == pytest.approx(2e11, rel=0.01)
    assert rec["images"] == rec["total_steps"] * 32
    assert rec["error"] == p["error"] and rec["error_interval"] == p.get("error_interval")
    assert rec["lr"] == config.load_yaml(DATA / "tiny_sweep.yaml")["base"].get("lr", config.PretrainConfig().lr)
    assert "no learning-rate search" in rec["rate"]
    csv_rec = plan.recommend(tmp_path / "none.csv", p)
    assert "variant" not in csv_rec and csv_rec["N"] == p["N"]


def test_a_recipe_without_its_class_count_is_solved_from_its_parameters_or_refused_by_name(tmp_path):
    """The planner reads the head's classes from summary.json; for a run written before summaries held them,
    the recorded parameter count gives them exactly (here 7 classes: the ladder's models built with 7), and a
    count that fits no whole number of classes is named, with the two ways out, instead of a guess."""
    study = fake_study(tmp_path / "study")
    for s in study.glob("*/summary.json"):
        doc = json.loads(s.read_text())
        n7 = flops.count_params(vit.make_model(doc["variant"], 7), (28, 28, 1))
        runs.write_json(s, {k: v for k, v in doc.items() if k != "num_classes"} | {"num_params": n7})
    recipe = plan.load_recipe(study)
    assert plan.recipe_classes(recipe) == 7
    for s in study.glob("*/summary.json"):
        runs.write_json(s, json.loads(s.read_text()) | {"num_params": 12345})
    with pytest.raises(config.ConfigError) as e:
        plan.run(study, 2e11, out=tmp_path / "plan.yaml", law=plan.LawSpec(n_bootstrap=10))
    assert e.value.problems[0].field == "num_classes"
    assert "does not record the head's class count" in str(e.value) and "rerun that run" in str(e.value)
    assert not (tmp_path / "plan.yaml").exists()
