"""The run-cost benchmarks (input pipeline, compilation cache, papermill overhead) on their
smallest settings: they run end to end and report what they say they measure."""

import importlib.util
import sys

import pytest

pytestmark = pytest.mark.slow  # runs the benchmarks as processes


def load(root, name):
    spec = importlib.util.spec_from_file_location(name, root / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_input_pipeline_bench(root, capsys):
    bench = load(root, "input_pipeline")
    res = bench.main(["--cases", "demo", "--passes", "1", "--steps", "2"])
    r = res["demo"]
    assert all(len(v) == 1 and v[0] > 0 for v in r["rates"].values())
    assert r["pipeline_over_step"][0] == pytest.approx(r["rates"]["pipeline"][0] / r["rates"]["step"][0])
    assert "| demo | Pico/4 28x28x1 | 128 | crop pad 2 + flip |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--cases", "nope"])


@pytest.mark.long  # two fresh processes compiling the same step: make test-long
def test_compile_cache_bench_reads_what_it_wrote(root, capsys):
    bench = load(root, "compile_cache")
    res = bench.main(["--cases", "demo", "--repeats", "1"])["demo"]
    assert set(res) == {"off", "cold", "warm"}
    # A warm cache skips compiling the training step: its first step is much faster than without.
    assert res["warm"][0]["first_step"] < 0.6 * res["off"][0]["first_step"]
    assert "| demo | Pico/4 28x28x1, batch 128 | warm |" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.bench  # `make bench-run-costs` runs it for real; out of `make test` for the suite's time budget
def test_run_overhead_bench(root, capsys):
    bench = load(root, "run_overhead")
    res = bench.main(["--steps", "2", "--repeats", "1"])
    assert set(res["median"]) == {"library", "notebook", "kernel"}
    assert res["median"]["notebook"] > res["median"]["kernel"] > 0
    assert "notebook - library:" in capsys.readouterr().out
