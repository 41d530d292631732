"""Sweeps: grid expansion with stable ids, early validation, shards, and a kill-and-resume run."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from browser import remote_tags, rendered_dom
from vitscale import build, cli, config, notebooks, runs, sweep
from vitscale.models import flops


def write(tmp_path, spec, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return p


def test_grid_expands_to_the_product_with_stable_distinct_ids(tmp_path):
    spec = {
        "base": {"variant": "Atto/7", "total_steps": 10, "warmup_steps": 1},
        "grid": {"variant": ["Atto/7", "Pico/7"], "train_examples": [100, 200, 300]},
        "runs": [{"variant": "Femto/7", "lr": 0.01}],
    }
    s1, s2 = sweep.load(write(tmp_path, spec)), sweep.load(write(tmp_path, spec, "copy.yaml"))
    ids = [r.run_id for r in s1.runs]
    assert len(ids) == 7 == len(set(ids))
    assert ids == [r.run_id for r in s2.runs]
    assert {(r.params["variant"], r.params["train_examples"]) for r in s1.runs if r.params["lr"] != 0.01} == {
        (v, n) for v in ("Atto/7", "Pico/7") for n in (100, 200, 300)
    }
    grid_only = sweep.load(write(tmp_path, {k: v for k, v in spec.items() if k != "runs"}, "grid.yaml"))
    assert {r.run_id for r in grid_only.runs} < set(ids)  # adding explicit runs keeps the grid's runs
    changed = sweep.load(write(tmp_path, {**spec, "fixed": {"seed": 1}}, "seed.yaml"))
    assert not set(ids) & {r.run_id for r in changed.runs}


def test_extends_overrides_the_parent_sweep(root):
    full = sweep.load(root / "parameters/sweeps/cpu_scaling.yaml")
    part = sweep.load(root / "parameters/sweeps/cpu_scaling_slice.yaml")
    assert len(full.runs) == 20 and len(part.runs) == 8  # 2 sizes x 2 data sizes x 2 searched rates
    for r in part.runs:  # the parent's recipe where the slice does not override it
        assert {k: r.params[k] for k in ("dataset", "batch_size", "schedule", "timescale")} == {
            k: full.runs[0].params[k] for k in ("dataset", "batch_size", "schedule", "timescale")
        }
        assert r.params["parametrization"] == "mup" and r.params["val_examples"] == 5000
    sizes = {r.params["variant"] for r in full.runs}
    counts = sorted(flops.count_params(build.model(config.PretrainConfig(variant=v), 10), (28, 28, 1)) for v in sizes)
    assert len(sizes) >= 4 and counts[-1] / counts[0] >= 30
    assert len({r.params["train_examples"] for r in full.runs}) >= 3
    durations: dict[tuple, set[int]] = {}
    for r in full.runs:
        p = r.params
        ends = {b["start"] + b["steps"] for b in p["cooldown_branches"]} | {p["total_steps"]}
        durations.setdefault((p["variant"], p["train_examples"]), set()).update(ends)
    assert len(durations) == 15 and min(len(d) for d in durations.values()) >= 5


def test_invalid_runs_are_reported_before_anything_runs(tmp_path):
    spec = {"base": {"total_steps": 10, "warmup_steps": 1}, "grid": {"variant": ["Atto/7", "Atto/5", "Nope/7"]}}
    with pytest.raises(config.ConfigError) as e:
        sweep.load(write(tmp_path, spec))
    fields = [p.field for p in e.value.problems]
    assert fields == ["run 1 {'variant': 'Atto/5'}: image_size", "run 2 {'variant': 'Nope/7'}: variant"]
    with pytest.raises(config.ConfigError, match="grids: unknown sweep key"):
        sweep.load(write(tmp_path, {"grids": {}}))


@pytest.mark.parametrize(
    ("analysis", "field"),
    [({"repetition": "twice"}, "analysis.repetition"), ({"n_bootstrap": -1}, "analysis.n_bootstrap"),
     ({"sweep_dir": "x"}, "analysis"), ("yes", "analysis"), ({"bogus": 1}, "analysis.bogus")],
)  # fmt: skip
def test_bad_analysis_parameters_exit_2_naming_them_before_anything_runs(tmp_path, capsys, analysis, field):
    f = write(tmp_path, {"base": {"variant": "Atto/7", "total_steps": 10, "warmup_steps": 1}, "analysis": analysis})
    assert cli.main(["sweep", str(f), "--out", str(tmp_path / "out")]) == 2
    assert field in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_analysis_runs_with_the_parameters_the_sweep_file_sets(tmp_path, monkeypatch):
    """`analysis: {repetition: muennighoff}` reaches the scaling notebook, also when `vitscale analyze` reruns it;
    without it the schema's defaults do."""
    f = write(tmp_path, {"base": {"variant": "Atto/7", "total_steps": 10, "warmup_steps": 1},
                         "analysis": {"repetition": "muennighoff", "n_bootstrap": 7}})  # fmt: skip
    spec = sweep.load(f)
    assert spec.analysis and spec.analysis_params == {"repetition": "muennighoff", "n_bootstrap": 7}
    out = tmp_path / "out"
    out.mkdir()
    sweep.record_search(spec, out)
    seen = []
    monkeypatch.setattr(notebooks, "execute", lambda kind, params, *a, **k: seen.append(params))
    notebooks.analyze(out)
    assert seen[-1]["repetition"] == "muennighoff" and seen[-1]["n_bootstrap"] == 7
    assert seen[-1]["sweep_dir"] == str(out)
    sweep.record_search(sweep.load(write(tmp_path, {"base": {"variant": "Atto/7"}}, "plain.yaml")), out)
    notebooks.analyze(out)
    assert seen[-1]["repetition"] == config.ScalingConfig(sweep_dir=".").repetition == "none"
    assert not sweep.load(write(tmp_path, {"base": {"variant": "Atto/7"}, "analysis": False}, "off.yaml")).analysis


def test_shards_partition_the_runs(tmp_path):
    with pytest.raises(config.ConfigError, match="i/N"):
        sweep.parse_shard("3/3")
    assert sweep.parse_shard("1/4") == (1, 4)
    spec = {"base": {"variant": "Atto/7", "total_steps": 10, "warmup_steps": 1}, "grid": {"seed": list(range(10))}}
    s = sweep.load(write(tmp_path, spec))
    parts = [[r.run_id for r in sweep.shard_of(s, (k, 3))] for k in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sorted(sum(parts, [])) == sorted(r.run_id for r in s.runs)  # disjoint, and together every run


@pytest.mark.long  # a killed sweep process and its rerun (77 s of setup): make test-long
def test_killed_sweep_finishes_on_rerun_without_repeating_finished_runs(killed_local_sweep, tmp_path):
    out, ids, stamp, r = killed_local_sweep
    first = out / ids[0]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 already done" in r.stdout
    index = runs.read_json(out / "index.json")["runs"]
    assert index == {i: "done" for i in ids}
    assert stamp == {f: (first / f).stat().st_mtime_ns for f in stamp}  # not repeated
    for i in ids:
        steps = [m["step"] for m in runs.read_metrics(out / i / "metrics.jsonl") if "train/loss" in m]
        assert steps == sorted(set(steps)) and steps[-1] == 12  # nothing lost, nothing logged twice
        assert (out / i / "summary.json").exists() and (out / i / "run.html").exists()
    rows = runs.collect(out)
    assert len(rows) == 4 and {r["branch"] for r in rows} == {None, "cooldown_6+3"}
    # The sweep's index page, as headless Chromium renders it: every run, done, linked to its report.
    dom = rendered_dom(out / "index.html", tmp_path)
    # readable on a narrow screen: the table scrolls inside its wrapper instead of running off the page
    assert '<div class="vs-table-wrap"><table class="vs-table" id="runs">' in dom
    assert remote_tags((out / "index.html").read_text()) == []
    for i in ids:
        assert f'<a href="{i}/run.html">{i}</a></td><td>done</td>' in dom
    summary = runs.read_json(out / ids[0] / "summary.json")
    assert f">{summary['final']['test/acc']:.4g}</td>" in dom  # the run's final test accuracy
    vitscale = str(Path(sys.executable).parent / "vitscale")
    status = subprocess.run([vitscale, "status", str(out)], capture_output=True, text=True, timeout=300)
    assert status.returncode == 0 and status.stdout.strip().splitlines()[-1] == "2 done", status.stdout


def test_a_run_whose_process_lives_here_is_running_and_left_alone(tmp_path):
    spec = {"base": {"variant": "Atto/7", "total_steps": 10, "warmup_steps": 1}, "grid": {"seed": [0]}}
    s = sweep.load(write(tmp_path, spec))
    out = tmp_path / "out"
    folder = out / s.runs[0].run_id
    folder.mkdir(parents=True)
    here = {"status": "running", "host": socket.gethostname()}
    runs.write_json(folder / runs.STATUS, {**here, "pid": os.getpid()})
    assert runs.status_of(folder) == "running"
    assert sweep.execute(s, out) == {s.runs[0].run_id: "running"}  # not started a second time
    assert not (folder / "params.yaml").exists()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while runs.Status(**here, pid=zombie.pid).live_here():  # alive, then a zombie until reaped
        assert time.monotonic() < deadline, "an exited, unreaped child still counts as running"
        time.sleep(0.05)
    zombie.wait()
    dead = zombie.pid
    for record in ({**here, "pid": dead}, {**here, "pid": os.getpid(), "host": "elsewhere"}, here):
        runs.write_json(folder / runs.STATUS, record)
        assert runs.status_of(folder) == "interrupted", record


# ----------------------------------------------------------------------------- shards started at once
def digits_sweep(tmp_path: Path) -> Path:
    """Four seconds-long runs on sklearn_digits, prepared into a fresh data_dir (nothing there yet)."""
    base = {
        "dataset": "sklearn_digits",
        "data_dir": str(tmp_path / "tfds"),
        "variant": "Atto/7",
        "train_examples": 256,
        "test_split": "test[:128]",
        "eval_batch_size": 128,
        "batch_size": 32,
        "total_steps": 6,
        "warmup_steps": 2,
        "eval_every": 6,
        "log_every": 3,
    }
    spec = {"name": "digits", "notebook": "pretrain", "base": base, "analysis": False, "grid": {"seed": [0, 1, 2, 3]}}
    return write(tmp_path, spec, "digits.yaml")


def vitscale(*args: str, **kw) -> subprocess.Popen:
    exe = str(Path(sys.executable).parent / "vitscale")
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_bad_shard_is_refused_before_the_sweep_file_is_read(tmp_path, capsys):
    assert cli.main(["sweep", str(digits_sweep(tmp_path)), "--shard", "2/2"]) == 2
    assert "--shard: '2/2' must be i/N" in capsys.readouterr().err
    assert not (tmp_path / "tfds").exists()  # no dataset was prepared


@pytest.mark.long  # three `vitscale sweep` processes, four real runs: make test-long
def test_two_shards_started_at_once_on_a_fresh_data_dir_finish_every_run(tmp_path):
    s, out = digits_sweep(tmp_path), tmp_path / "out"
    shards = [vitscale("sweep", str(s), "--shard", f"{i}/2", "--out", str(out)) for i in (0, 1)]
    results = [p.communicate(timeout=900) for p in shards]
    for p, (stdout, stderr) in zip(shards, results):
        assert p.returncode == 0 and "Traceback" not in stderr, (stdout[-2000:], stderr[-3000:])
    ids = sorted(r.run_id for r in sweep.load(s).runs)
    index = json.loads((out / "index.json").read_text())
    assert index["runs"] == {i: "done" for i in ids}  # both shards' runs, as the last writer saw them
    assert all((out / i / "summary.json").is_file() for i in ids)
    status = vitscale("status", str(out)).communicate(timeout=300)[0]
    assert status.strip().splitlines()[-1] == "4 done", status
    third = vitscale("sweep", str(s), "--out", str(out))
    stdout, stderr = third.communicate(timeout=600)
    assert third.returncode == 0 and "4 already done, 0 to run" in stdout, (stdout, stderr[-2000:])
