"""A searched sweep end to end through `vitscale sweep` (make test-long): it runs every value, a value that
diverges is recorded as such and never chosen nor retried, the analysis keeps the best run per point on the
validation split, a rerun finds nothing to do, and `--extend-search` adds the next value beyond an edge."""

import json

import pytest
import yaml

import searched
from vitscale import runs, sweep

pytestmark = pytest.mark.long

SPEC = searched.spec("searched", total_steps=12, eval_every=6)


def vitscale(*args: str):
    return searched.vitscale(*args, timeout=900)


def test_a_searched_sweep_runs_chooses_on_validation_and_extends(tmp_path):
    path = tmp_path / "searched.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    first = vitscale("sweep", str(path), "--out", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())["runs"]
    assert sorted(index.values()) == ["diverged", "done", "done"], index
    summary = json.loads((out / "scaling" / "summary.json").read_text())["search"]
    (point,) = summary["points"]
    tried = dict((str(v), e) for v, e in point["tried"]["lr"])
    assert tried["1e+30"] is None  # recorded as tried (index: "diverged"; no error to show), never chosen
    assert point["best"]["lr"] in (0.0005, 0.001)
    # The best is the lower validation error of the two finished runs (read from their own metrics).
    vals = {}
    for rid, state in index.items():
        if state == "done":
            final = runs.read_json(out / rid / "summary.json")["final"]
            vals[yaml.safe_load((out / rid / "params.yaml").read_text())["lr"]] = (
                1 - final["val/acc"],
                final["val/loss"],
            )
    assert point["best"]["lr"] == min(vals, key=vals.get)
    report = (out / "scaling" / "report.html").read_text()
    assert "Learning-rate law" in report and "What won per point" in report

    again = vitscale("sweep", str(path), "--out", str(out), "--no-analysis")
    assert again.returncode == 0 and "0 to run" in again.stdout, again.stdout[-2000:]

    if point["at_edge"]["lr"] == "low":  # the best is 0.0005: the next value is 0.00025
        extended = vitscale("sweep", str(path), "--out", str(out), "--extend-search", "--no-analysis")
        assert extended.returncode == 0, extended.stdout[-2000:] + extended.stderr[-2000:]
        assert "1 run(s) added" in extended.stdout and "-> 0.00025" in extended.stdout
        widened = sweep.with_extras(sweep.load(path), out)
        assert len(widened.runs) == 4
        assert sorted(json.loads((out / "index.json").read_text())["runs"].values()) == [
            "diverged",
            "done",
            "done",
            "done",
        ]
    else:  # 0.001 is inside the range (1e30 above it diverged): nothing to extend
        extended = vitscale("sweep", str(path), "--out", str(out), "--extend-search", "--no-analysis")
        assert "0 run(s) added" in extended.stdout, extended.stdout[-2000:]
