"""A searched sweep through `vitscale sweep` (make test-long), grouped (the default) and with `--no-group`:
the same runs, statuses and values. The group trains the three rates as one program; the one that diverges
is recorded as diverged by its own run, as alone; each run's notebook finds its main run finished."""

import pytest
import yaml

import searched
from vitscale import metrics, runs

pytestmark = pytest.mark.long

# group: on a CPU too (unset, only accelerators group)
SPEC = searched.spec("grouped", total_steps=6, eval_every=3, group=True)


def vitscale(*args: str):
    return searched.vitscale(*args, timeout=1500)


def test_a_grouped_sweep_gives_the_runs_of_one_without_groups(tmp_path):
    path = tmp_path / "grouped.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    outs = {}
    for how, flags in (("grouped", []), ("alone", ["--no-group"])):
        outs[how] = tmp_path / how
        done = vitscale("sweep", str(path), "--out", str(outs[how]), "--no-analysis", *flags)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert ("group of 3 (one program)" in done.stdout) == (how == "grouped"), done.stdout[-2000:]
    index = {how: runs.read_json(out / "index.json")["runs"] for how, out in outs.items()}
    assert index["grouped"] == index["alone"] and sorted(index["grouped"].values()) == ["diverged", "done", "done"]
    for rid, state in index["grouped"].items():
        got, want = (runs.read_metrics(outs[h] / rid / "metrics.jsonl") for h in ("grouped", "alone"))
        assert [r["step"] for r in got] == [r["step"] for r in want]
        for g, w in zip(got, want):
            for k in set(w) - metrics.TIMING:
                assert g[k] == pytest.approx(w[k], rel=2e-5, abs=1e-7), (rid, g["step"], k)
        if state == "done":
            summary = runs.read_json(outs["grouped"] / rid / "summary.json")
            assert summary["group_copies"] == 3 and (outs["grouped"] / rid / "run.html").is_file()
        else:
            reason = runs.Status.read(outs["grouped"] / rid).reason
            assert reason == runs.Status.read(outs["alone"] / rid).reason and "at step 3" in reason
    status = [vitscale("status", str(out)).stdout for out in outs.values()]
    assert status[0] == status[1]
