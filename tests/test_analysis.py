"""Tests for vitscale.analysis (and the scaling figures) on synthetic sweeps with known laws."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest

import browser
from vitscale import analysis, formats, metrics, notebooks
from vitscale.report import page as report
from vitscale.report import scaling, scaling_figures

# ----------------------------------------------------------------------------- synthetic sweep
# Frontier law in FLOP units: E*(C) = a (C + d)^-b + c. Its low-compute bend d sits inside the
# sweep's compute range (3.8e10 .. 3.1e13) and c is well above 0: both saturations are present.
TRUTH = dict(a=3950.0, b=0.35, c=0.1, d=1e11)
BATCH = 128
VARIANTS = {"Pico/7": 2e5, "Nano/7": 6.7e5, "Micro/7": 1.6e6, "Mini/7": 5e6}
STEPS = (250, 500, 1000, 2000, 4000, 8000)
DATA = (6_000, 20_000, 60_000)
# (variant, steps) on the largest data size that lie on the law; adjacent ones are at most 2.4x
# apart in compute, so every other run, >= 30% worse than the law, is dominated by one of them.
ON_LAW = (
    {("Pico/7", s) for s in (250, 500, 1000, 2000)}
    | {("Nano/7", s) for s in (1000, 2000)}
    | {("Micro/7", s) for s in (1000, 2000, 4000)}
    | {("Mini/7", s) for s in (2000, 4000, 8000)}
)


def law(C, a, b, c, d):
    return a * (np.asarray(C, dtype=float) + d) ** (-b) + c


def brute_force_frontier(x, y):
    return [not any(x[j] <= x[i] and y[j] < y[i] for j in range(len(x)) if j != i) for i in range(len(x))]


def make_row(variant, n, data, steps, error, *, branch=None, **extra):
    images = BATCH * steps
    return {
        "run_id": f"{variant.split('/')[0].lower()}_d{data}_s{steps}",
        "branch": branch,
        "variant": variant,
        "num_params": int(n),
        "train_examples": data,
        "total_steps": steps,
        "batch_size": BATCH,
        "images_seen": images,
        "train_flops": 6.0 * n * images,
        "device_seconds": 1e-9 * n * images,
        "test/acc": 1.0 - float(error),
        "test/loss": 2.0 * float(error),
        **extra,
    }


def frontier_sweep(noise: float = 0.0, seed: int = 0) -> tuple[list[dict], list[bool]]:
    """72 runs; those in ON_LAW (largest data) lie on TRUTH, the others are 30-80% worse."""
    rng = np.random.default_rng(seed)
    rows, expected = [], []
    for (v, n), d, s in itertools.product(VARIANTS.items(), DATA, STEPS):
        on = d == DATA[-1] and (v, s) in ON_LAW
        e = law(6.0 * n * BATCH * s, **TRUTH) * (1.0 if on else rng.uniform(1.3, 1.8))
        e *= math.exp(noise * rng.standard_normal())
        rows.append(make_row(v, n, d, s, e, **{"fewshot/mnist_5k/10shot": 0.95 - 0.5 * e}))
        expected.append(on)
    # the sweep premise: the designated runs are exactly the Pareto frontier
    x = [r["train_flops"] for r in rows]
    y = [metrics.error_of(r, "test/acc") for r in rows]
    assert brute_force_frontier(x, y) == expected
    return rows, expected


@pytest.fixture(scope="module")
def sweep():
    return frontier_sweep()


@pytest.fixture(scope="module")
def fitted(sweep):
    rows, _ = sweep
    return analysis.analyze(rows, n_bootstrap=20, seed=0)


# ----------------------------------------------------------------------------- columns
def test_metric_columns_and_error_of():
    rows = [
        {
            "test/acc": 0.8,
            "test/loss": 0.5,
            "fewshot/mnist_5k/10shot": 0.7,
            "fewshot/mnist_5k/5shot": 0.6,
            "fewshot/mnist_5k/10shot_std": 0.01,
            "fewshot/digits/1shot": 0.3,
            "variant": "Pico/7",
            "num_params": 3,
        },
        {"test/acc": 0.75, "branch": None},
    ]
    # Accuracies only (test/loss is analysable when asked for), test first, few-shot by dataset and shots.
    assert analysis.metric_columns(rows) == [
        "test/acc",
        "fewshot/digits/1shot",
        "fewshot/mnist_5k/5shot",
        "fewshot/mnist_5k/10shot",
    ]
    assert metrics.error_of(rows[0], "test/acc") == pytest.approx(0.2)
    assert metrics.error_of(rows[0], "test/loss") == 0.5
    assert metrics.error_of(rows[0], "fewshot/mnist_5k/10shot") == pytest.approx(0.3)
    assert math.isnan(metrics.error_of(rows[1], "fewshot/digits/1shot"))
    with pytest.raises(ValueError, match="'num_params' is not analysable"):
        metrics.error_of(rows[0], "num_params")
    assert analysis.run_label({"run_id": "r1", "branch": "cooldown_800+200"}) == "r1/cooldown_800+200"
    assert analysis.data_label(None) == "all" and analysis.data_label(60000) == "60,000"


# ----------------------------------------------------------------------------- analyze
def test_analyze_recovers_law_and_frontier(sweep, fitted):
    rows, expected = sweep
    assert fitted["frontier"].tolist() == expected
    assert fitted["used"].all()
    pl = fitted["power_law"]
    for k, v in TRUTH.items():
        assert getattr(pl, k) == pytest.approx(v, rel=1e-3), k
    for k, v in TRUTH.items():  # noiseless frontier: every bootstrap refit is the truth
        lo, hi = pl.intervals[k]
        assert lo == pytest.approx(v, rel=1e-2) and hi == pytest.approx(v, rel=1e-2), k
    # M4 is another family: it need only follow the frontier closely
    assert fitted["m4"].rmse_log < 0.05
    ex = fitted["extrapolation"]
    x_front = [r["train_flops"] for r, on in zip(rows, expected) if on]
    assert ex["cut"] == pytest.approx(math.sqrt(min(x_front) * max(x_front)))  # geometric midpoint
    assert not ex["cut_moved"] and ex["n_train"] + ex["n_test"] == sum(expected)
    assert ex["results"]["power_law"]["rmse_log"] < 1e-4  # exact law extrapolates exactly
    assert np.isfinite(ex["results"]["m4"]["rmse_log"])


def test_analyze_summary_is_json_and_complete(sweep, fitted):
    rows, expected = sweep
    s = json.loads(json.dumps(fitted["summary"], allow_nan=False))
    assert s["metric"] == "test/acc" and s["x"] == "train_flops"
    assert s["n_runs"] == len(rows) and s["n_frontier"] == sum(expected)
    assert s["frontier_runs"] == [analysis.run_label(r) for r, on in zip(rows, expected) if on]
    assert set(s["power_law"]["intervals"]) == set("abcd")
    assert s["power_law"]["b"] == pytest.approx(TRUTH["b"], rel=1e-3)
    assert {"e_inf", "alpha", "beta", "c"} <= set(s["m4"])
    assert set(s["extrapolation"]["results"]) == {"power_law", "M1", "M2", "M3", "m4"}
    assert "fit" not in s["extrapolation"]["results"]["power_law"]


def test_analyze_noisy_sweep_tracks_law():
    # 1% noise on 12 frontier points: a, b, d trade off against each other, but the curve and the
    # floor c are pinned down
    rows, _ = frontier_sweep(noise=0.01, seed=3)
    res = analysis.analyze(rows, n_bootstrap=16, seed=1)
    pl = res["power_law"]
    x = res["x_values"][res["frontier"]]
    np.testing.assert_allclose(pl.predict(x), law(x, **TRUTH), rtol=0.035)
    assert pl.c == pytest.approx(TRUTH["c"], rel=0.3)
    assert 0.28 < pl.b < 0.45
    for k in "abcd":
        lo, hi = pl.intervals[k]
        assert lo <= getattr(pl, k) <= hi, k


def test_analyze_skips_rows_without_the_metric_and_accepts_other_x(sweep):
    rows, expected = sweep
    rows = [dict(r) for r in rows]
    for r in rows[::5]:  # some runs were not evaluated few-shot
        del r["fewshot/mnist_5k/10shot"]
    res = analysis.analyze(rows, metric="fewshot/mnist_5k/10shot", x="device_seconds", n_bootstrap=0)
    assert res["used"].tolist() == [i % 5 != 0 for i in range(len(rows))]
    assert not (res["frontier"] & ~res["used"]).any()
    assert res["summary"]["n_runs"] == len(rows) - len(rows[::5])


def test_analyze_errors_name_metric_and_counts(sweep):
    rows, _ = sweep
    few = rows[:3]
    with pytest.raises(
        ValueError,
        match=r"test/acc against train_flops \(3 runs with this metric\): "
        r"too few frontier points .*got 2 \(of 3 runs\), need at least 4",
    ):
        analysis.analyze(few, n_bootstrap=0)
    with pytest.raises(ValueError, match=r"fewshot/digits/5shot against train_flops: none of the 72 rows"):
        analysis.analyze(rows, metric="fewshot/digits/5shot")
    zero = [dict(r) for r in rows]
    zero[4]["test/acc"] = 1.0
    with pytest.raises(ValueError, match=r"1 run\(s\) have x <= 0 or error <= 0 \(first: pico_d6000_s4000"):
        analysis.analyze(zero)


def test_m4_leaves_out_chance_level_runs(sweep):
    rows, expected = sweep
    res = analysis.analyze(rows, n_bootstrap=0, e0=0.45)  # the cheapest frontier runs are >= 0.45
    front_e = res["errors"][res["frontier"]]
    assert (front_e >= 0.45).sum() >= 1
    assert res["m4"].n == int((front_e < 0.45).sum())
    assert res["power_law"].n == sum(expected)


def test_extrapolation_cut_moves_up_when_too_few_points_below():
    rows, _ = frontier_sweep()
    res = analysis.analyze(rows, n_bootstrap=0, cut_fraction=0.05)
    ex = res["extrapolation"]
    assert ex["cut_moved"] and ex["n_train"] == 4 and ex["n_test"] == 8


def test_analyze_all_reports_unfittable_metric(sweep):
    rows, _ = sweep
    rows = [dict(r) for r in rows]
    for r in rows[3:]:
        r.pop("fewshot/mnist_5k/10shot")
    out = analysis.analyze_all(rows, n_bootstrap=0)
    assert set(out) == {"test/acc", "fewshot/mnist_5k/10shot"}
    assert "power_law" in out["test/acc"]
    err = out["fewshot/mnist_5k/10shot"].reason
    assert "fewshot/mnist_5k/10shot" in err and "3 runs" in err
    assert analysis.analyze_all(rows, ["test/acc"], n_bootstrap=0).keys() == {"test/acc"}


def test_write_summary(tmp_path, sweep, fitted):
    rows, _ = sweep
    results = {"test/acc": fitted, "fewshot/x/1shot": analysis.Failed("too few", "fewshot/x/1shot")}
    found = {"test/acc": analysis.findings(rows, result=fitted)}
    path = analysis.write_summary(results, tmp_path / "scaling", findings=found)
    doc = json.loads(path.read_text())
    pl = doc["metrics"]["test/acc"]["power_law"]
    for k, v in TRUTH.items():
        assert pl[k] == pytest.approx(v, rel=1e-3)
        assert len(pl["intervals"][k]) == 2
    assert "e_inf" in doc["metrics"]["test/acc"]["m4"]
    assert doc["metrics"]["test/acc"]["extrapolation"]["results"]["power_law"]["rmse_log"] < 1e-4
    assert doc["metrics"]["fewshot/x/1shot"] == {"error": "too few"}
    assert doc["findings"]["test/acc"]["double_saturation"]["holds"] is True


# ----------------------------------------------------------------------------- findings
NOT_FITTED = analysis.Failed("not fitted in this test", "test/acc")


def toy_sweep(error_fn, variants=VARIANTS, data=DATA, steps=STEPS):
    return [
        make_row(v, n, d, s, error_fn(n, d, BATCH * s))
        for (v, n), d, s in itertools.product(variants.items(), data, steps)
    ]


def saturating(n, d, i):
    """Small models are capacity-bound (data barely helps); big ones are data-bound; at equal
    images seen the bigger model is better."""
    return 0.05 + max(100.0 * n**-0.4, 40.0 * d**-0.5) + 20.0 * i**-0.4


def data_hungry_small(n, d, i):
    """Small models gain the most from data; bigger models are worse at equal images seen."""
    return 0.05 + 40.0 * d**-0.5 * (5e6 / n) ** 0.5 + 5.0 * (i / n) ** -0.5


def test_findings_saturation_and_sample_efficiency_hold():
    f = analysis.findings(toy_sweep(saturating), result=NOT_FITTED)
    sat = f["saturation"]
    assert sat["holds"] is True
    assert sat["smallest_model"] == "Pico/7" and sat["largest_model"] == "Mini/7"
    assert sat["middle_data"] == 20_000 and sat["largest_data"] == 60_000
    assert sat["smallest_improvement"] == pytest.approx(0.0, abs=1e-12)
    i = BATCH * STEPS[-1]
    assert sat["largest_improvement"] == pytest.approx(saturating(5e6, 20_000, i) - saturating(5e6, 60_000, i))
    assert sat["largest_improvement"] > 0.05
    eff = f["sample_efficiency"]
    assert eff["holds"] is True and eff["fraction"] == 1.0 and eff["matched"] == 3 * len(STEPS)
    assert all(p["bigger_better"] == p["matched"] == len(STEPS) for p in eff["pairs"])
    json.dumps(f, allow_nan=False)


def test_findings_do_not_hold_on_counter_examples():
    f = analysis.findings(toy_sweep(data_hungry_small), result=NOT_FITTED)
    assert f["saturation"]["holds"] is False
    assert f["saturation"]["smallest_improvement"] > f["saturation"]["largest_improvement"] > 0
    assert f["sample_efficiency"]["holds"] is False and f["sample_efficiency"]["fraction"] == 0.0
    assert "not seen at this scale" in f["saturation"]["verdict"]


def test_findings_untestable_with_one_model_or_data_size():
    f = analysis.findings(toy_sweep(saturating, variants={"Pico/7": 2e5}, data=(1000,)), result=NOT_FITTED)
    assert f["saturation"]["holds"] is None and "not testable" in f["saturation"]["verdict"]
    assert f["sample_efficiency"]["holds"] is None


def test_findings_double_saturation(fitted, sweep):
    rows, _ = sweep
    yes = analysis.findings(rows, result=fitted)["double_saturation"]
    assert yes["holds"] is True and yes["c_interval"][0] > 0 and yes["d_interval"][0] > 0
    assert "both saturations visible" in yes["verdict"]
    # a plain power law (c = 0, d = 0) on the frontier: no saturation either way
    plain = [
        dict(r, **{"test/acc": 1 - float(law(r["train_flops"], a=5e3, b=0.35, c=0.0, d=0.0)) * (1.0 if on else 1.5)})
        for r, on in zip(*sweep)
    ]
    no = analysis.findings(plain, n_bootstrap=20)["double_saturation"]
    assert no["holds"] is False and no["c_interval"][0] == pytest.approx(0.0, abs=1e-6)
    assert "neither > 0" in no["verdict"] or "only" in no["verdict"]
    bad = analysis.findings(rows[:2], n_bootstrap=0)["double_saturation"]
    assert bad["holds"] is None and "too few" in bad["verdict"]


# ----------------------------------------------------------------------------- figures
def test_figures_have_expected_traces(sweep, fitted):
    rows, _ = sweep
    fig = scaling_figures.scaling_error_vs_compute(rows, fitted)
    # 4 model sizes + frontier + band + power law + M4
    assert len(fig.data) == 4 + 4
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert "%{customdata[0]}" in fig.data[0].hovertemplate and fig.data[0].customdata[0][0] == rows[0]["run_id"]
    assert len(fig.data[4].x) == sum(fitted["frontier"])
    assert len(scaling_figures.scaling_best_vs_size(rows, "test/acc").data) == len(DATA)
    assert len(scaling_figures.scaling_error_vs_images(rows, "test/acc").data) == len(DATA) * len(VARIANTS)
    assert len(scaling_figures.scaling_extrapolation(fitted).data) == 5  # fitted, held out, cut, power law, M4
    failed = analysis.Failed("too few", "fewshot/x/1shot")
    results = {"test/acc": fitted, "fewshot/x/1shot": failed}
    # nobody has that metric: a sentence, not an empty frame
    assert isinstance(scaling_figures.scaling_error_vs_compute(rows, failed), report.Sentence)
    assert "too few" in scaling_figures.scaling_extrapolation(failed).text
    table = str(scaling.scaling_constants_table(results))
    assert "<th>test/acc</th><th>fewshot/x/1shot</th>" in table
    assert "too few" in table  # the unfittable metric says why
    found = {"test/acc": analysis.findings(rows, result=fitted)}
    assert str(scaling.scaling_findings_table(found)).count("<tr>") == 1 + 3
    assert str(scaling.scaling_runs_table(rows)).count("<tr>") == 1 + len(rows)
    assert len(scaling_figures.scaling_report_figures(rows, results)) == 8


# ----------------------------------------------------------------------------- notebook
def test_notebook_is_thin_with_parameters_cell(root):
    nb = json.loads((root / "notebooks/scaling_analysis.ipynb").read_text())
    cells = [dict(c, source="".join(c["source"])) for c in nb["cells"]]
    assert nb["metadata"]["kernelspec"]["name"] == "vitscale"
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"].startswith("# ")
    assert cells[1]["metadata"]["tags"] == ["parameters"]
    assert "params = dict(" in cells[1]["source"] and "out_dir = " in cells[1]["source"]
    assert all(c.get("id") for c in cells)
    for c in cells:
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None
            lines = [ln.strip() for ln in c["source"].splitlines()]
            assert not any(ln.startswith(("def ", "for ", "while ", "class ")) for ln in lines), c["source"]


@pytest.mark.slow
def test_notebook_through_papermill(root, tmp_path):
    """A synthetic sweep folder (run folders as `runs.collect` reads them) → the notebook → summary.json,
    and its report as headless Chromium shows it: headline first, every table cell there in full, offline."""
    import papermill

    rows, _ = frontier_sweep(noise=0.01, seed=2)
    rows[0]["run_id"] = "pico_d6000_s250_long_name_with_underscores"  # issue 25: names were clipped
    for r in rows:
        run = tmp_path / "sweep" / r["run_id"]
        run.mkdir(parents=True)
        (run / "params.yaml").write_text(f"name: {r['run_id']}\n")
        final = {
            "test/acc": r["test/acc"],
            "test/loss": r["test/loss"],
            "fewshot/mnist_5k/10shot": r["fewshot/mnist_5k/10shot"],
        }
        summary = {
            k: r[k]
            for k in (
                "variant",
                "num_params",
                "train_examples",
                "batch_size",
                "total_steps",
                "images_seen",
                "train_flops",
                "device_seconds",
            )
        }
        (run / "summary.json").write_text(json.dumps(summary | {"kind": "pretrain", "final": final, "branches": []}))
    out = tmp_path / "sweep" / "scaling"
    papermill.execute_notebook(
        str(root / "notebooks/scaling_analysis.ipynb"),
        str(tmp_path / "report.ipynb"),
        kernel_name="vitscale",
        cwd=str(root / "notebooks"),
        progress_bar=False,
        parameters={
            "params": {"sweep_dir": str(tmp_path / "sweep"), "metrics": None, "x": "train_flops", "n_bootstrap": 10},
            "out_dir": str(out),
        },
    )
    doc = json.loads((out / "summary.json").read_text())
    assert set(doc["metrics"]) == {"test/acc", "fewshot/mnist_5k/10shot"}
    assert doc["metrics"]["test/acc"]["n_runs"] == len(rows)
    assert doc["metrics"]["test/acc"]["power_law"]["c"] == pytest.approx(TRUTH["c"], rel=0.3)
    assert set(doc["findings"]) == {"test/acc", "fewshot/mnist_5k/10shot"}
    assert set(doc["findings"]["test/acc"]) == {"saturation", "sample_efficiency", "double_saturation"}
    assert set(doc["allocation"]) >= {"joint", "isoflop", "envelope", "k", "plans"}  # the Allocation section

    page = notebooks.export_html(tmp_path / "report.ipynb")
    source = page.read_text()
    assert browser.remote_tags(source) == []  # no script or style sheet from a CDN
    assert browser.external_requests(page, tmp_path) == []
    dom = browser.rendered_dom(page, tmp_path)
    text = browser.visible_text(dom)
    cells = browser.cell_texts(source)
    assert len(cells) > 9 * len(rows) and [c for c in cells if c not in text] == []
    for r in rows:  # every run's full name and compute, as the formatting helpers write them
        assert f"{r['run_id']}" in text and formats.flops(r["train_flops"]) in text
    # the headline (test error first) comes before any figure, and the details are collapsed
    assert dom.index('class="vs-headline"') < dom.index("plotly-graph-div")
    head = text.index("Headline")
    assert head < text.index("test error", head) < text.index("10-shot error, mnist_5k", head)
    assert dom.count('<details class="vs-details"') == 2 and '<details class="vs-details" open' not in dom
    figures = len(re.findall(r'class="plotly-graph-div[^"]*"', dom))
    # the headline's frontier of the upstream metric, 4 per metric (drawn, even inside closed details) and the
    # Allocation section's 2; the headline's figure comes before the details
    assert figures == 1 + 2 * 4 + 2 and dom.count('class="main-svg"') >= figures
    assert dom.index("plotly-graph-div") < dom.index('<details class="vs-details"')


def test_every_law_is_checked_and_the_best_named(fitted):
    """The sweep's frontier follows a saturating power law: it extrapolates best; M1 (no floor) cannot."""
    ex = fitted["extrapolation"]
    assert set(ex["results"]) == {"power_law", "M1", "M2", "M3", "m4"}
    scored = {k: r["rmse_log"] for k, r in ex["results"].items() if "rmse_log" in r}
    assert ex["best_law"] == min(scored, key=scored.get) == "power_law"
    assert scored["M1"] > 10 * scored["power_law"]
    row = scaling.constants_rows({"test/acc": fitted})[0]
    assert row["extrapolates best"] == "power law" and row["extrap. RMSE log, M1"] == scored["M1"]


def test_constants_show_bounds_and_unresolved_intervals():
    pl = {
        "a": 3e13,
        "b": 2.0,
        "c": 0.1,
        "d": 0.0,
        "intervals": {"a": (1.0, 1e113), "c": (0.09, 0.11)},
        "at_bound": ["b"],
        "unresolved": ["a"],
    }
    text = {k: formats.with_interval(pl[k], pl["intervals"].get(k), scaling.flags(pl, k)) for k in "abc"}
    assert text["a"].endswith("(unresolved)") and text["b"] == "2 (at bound)" and text["c"] == "0.1 [0.09, 0.11]"


def test_double_saturation_is_not_testable_on_four_frontier_points():
    """Issue 25: a 2-run sweep (each with a cooldown branch) has 4 frontier points for the 4-constant
    law; the curve passes through them, so the finding must say "not testable", not yes or no."""
    rows = [make_row("Pico/7", 2e5, 60_000, s, law(6.0 * 2e5 * BATCH * s, **TRUTH)) for s in (250, 1000)]
    rows += [make_row("Mini/7", 5e6, 60_000, s, law(6.0 * 5e6 * BATCH * s, **TRUTH)) for s in (2000, 8000)]
    found = analysis.findings(rows, n_bootstrap=20)["double_saturation"]
    assert found["holds"] is None
    assert found["verdict"].startswith("not testable: 4 frontier points for 4 constants")
    headline = str(
        scaling.scaling_headline(
            {"test/acc": analysis.analyze(rows, n_bootstrap=20)}, {"test/acc": {"double_saturation": found}}
        )
    )
    assert "not testable: double saturation" in headline and "Findings that hold: none" in headline


def test_the_headline_recommends_a_next_run_only_when_the_law_determines_it():
    plan = {"C": 4e13, "N": 2.05e5, "D": 1.9e6, "error": 0.1113, "error_interval": [0.0995, 0.122]}
    plan["extrapolates"] = True
    text = scaling.next_run_text({"summary": {"plans": [{**plan, "determined": True}]}})
    assert "205k parameters" in text and "11.1% [9.95, 12.2]" in text and "extrapolating" in text
    text = scaling.next_run_text({"summary": {"plans": [{**plan, "determined": False}]}})
    assert "not determined" in text and "parameters" not in text
    assert "too few runs" in scaling.next_run_text(analysis.Failed("too few runs"))


def test_the_headline_leads_with_the_recommended_run_and_names_unresolved_constants(tmp_path):
    """Issue 35.5: the first screen is the next run (size, steps, rate, predicted error with its interval and
    the coverage backtests measured) and the upstream frontier with its law; unresolved constants are named
    there, their values left to the details."""
    rows = [make_row("Pico/7", 2e5, 60_000, s, law(6.0 * 2e5 * BATCH * s, **TRUTH)) for s in (250, 1000)]
    rows += [make_row("Mini/7", 5e6, 60_000, s, law(6.0 * 5e6 * BATCH * s, **TRUTH)) for s in (2000, 8000)]
    fitted = analysis.analyze(rows, n_bootstrap=20)
    plan = {"C": 4e13, "N": 2.05e5, "D": 1.9e6, "error": 0.1113, "error_interval": [0.0995, 0.122],
            "error_interval_level": 0.9, "error_interval_coverage": 0.76, "error_parameter_interval": [0.105, 0.118],
            "extrapolates": True, "determined": True}  # fmt: skip
    rec = plan | {"variant": "Pico/7", "params": 204938, "total_steps": 31304, "images": 31304 * 64, "lr": 0.00504,
                  "rate": "learning rate per run from the study's rate law"}  # fmt: skip
    html = str(scaling.scaling_headline({"test/acc": fitted}, {}, {"summary": {"plans": [plan]}}, rows=rows,
                                        next_run=rec))  # fmt: skip
    order = [html.index(s) for s in ("Recommended next run", "Pico/7 (205k parameters", "plotly", "<h3>")]
    assert order == sorted(order)  # the run, then the frontier figure, then the per-metric lines
    for text in (
        "31,304 steps",
        "2M images seen",
        "0.00504",
        "11.1% [9.95, 12.2]",
        "90% nominal, 76% in backtests",
        "[10.5, 11.8]",
    ):
        assert text in html
    unresolved = fitted["power_law"].as_dict()["unresolved"]
    assert unresolved and f"unresolved (see the details): {', '.join(sorted(unresolved))}" in html
