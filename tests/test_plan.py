"""The planner and the CSV front door (issue 27): `vitscale plan` on a study writes an IsoFLOP sweep
file that `vitscale sweep` accepts and that spends the budget; `vitscale analyze FILE.csv` writes the
allocation report; a bad CSV is exit code 2 with nothing written."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vitscale import cli, config, flops, plan, runs, sweep
from vitscale.models import vit
from vitscale.scaling import allocation, table

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
        runs.atomic_write_text(run / "params.yaml", yaml.safe_dump({**params, "name": run.name}))
        summary = {"kind": "pretrain", "variant": variant, "num_classes": 10, "num_params": n,
                   "forward_flops_per_image": fwd, "batch_size": cfg.batch_size, "train_examples": 1_000_000,
                   "final": final, "branches": branches, **main}  # fmt: skip
        runs.write_json(run / "summary.json", summary)
    return root


def test_plan_writes_an_isoflop_sweep_that_spends_the_budget(tmp_path):
    study = fake_study(tmp_path / "study")
    budget = 2e11
    res = plan.run(study, budget, out=tmp_path / "plan.yaml", n_bootstrap=10)
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


def test_predicted_vs_achieved_reads_the_law_at_each_planned_run():
    """The prediction is the closed form E + A/N^alpha + B/D^beta at the run's own (N, D)."""
    fit = allocation.JointFit(E=0.1, A=5.0, B=40.0, alpha=0.3, beta=0.4, k=6.0, objective=0.0, n_points=9,
                              n_range=(1e4, 1e6), d_range=(1e4, 1e6))  # fmt: skip
    pts = table.Points(
        N=np.array([1e5, 3e5]), D=np.array([2e6, 5e5]), C=np.array([1.2e12, 9e11]), error=np.array([0.2, 0.15]),
        run=["a", "b"], group=["", ""], k=6.0, k_given=True,
    )  # fmt: skip
    rows = plan.predicted_vs_achieved(fit, pts)
    assert [r["run"] for r in rows] == ["b", "a"]  # best achieved first
    for r, (n, d) in zip(rows, [(3e5, 5e5), (1e5, 2e6)]):
        assert r["predicted"] == pytest.approx(0.1 + 5.0 * n**-0.3 + 40.0 * d**-0.4, rel=1e-12)
        assert r["interval"] is None  # no bootstrap fits, no interval


def test_a_recipe_without_its_class_count_is_refused_by_name(tmp_path):
    """The planner reads the head's classes from summary.json; a run written before summaries held them
    is named, with the two ways out, instead of a class count guessed from its FLOPs."""
    study = fake_study(tmp_path / "study")
    for s in study.glob("*/summary.json"):
        runs.write_json(s, {k: v for k, v in json.loads(s.read_text()).items() if k != "num_classes"})
    with pytest.raises(config.ConfigError) as e:
        plan.run(study, 2e11, out=tmp_path / "plan.yaml", n_bootstrap=10)
    assert e.value.problems[0].field == "num_classes"
    assert "summary.json does not record the head's class count" in str(e.value) and "rerun that run" in str(e.value)
    assert not (tmp_path / "plan.yaml").exists()
