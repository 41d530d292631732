"""What running a study through papermill notebooks costs per run, beside calling the library.

Times, back to back in fresh processes, the same small pretraining run (parameters/pretrain/demo.yaml
shortened to --steps steps) three ways:

  library   `python -c "vitscale.train.run(cfg, out)"`: process start, imports, the run itself
  notebook  `vitscale run params.yaml --out out`: papermill starts a kernel, executes
            notebooks/pretrain.ipynb (imports, the run, the plots), then nbconvert renders run.html
  kernel    papermill executing a notebook whose only cell imports vitscale (kernel start + imports)

and, from inside the notebook run, the share of its wall time spent outside `train.run`. The
difference notebook - library is papermill's per-run overhead; it is paid once per run of a sweep.

Usage:
  .venv/bin/python benchmarks/run_overhead.py                  # 3 repeats of a 50-step run
  .venv/bin/python benchmarks/run_overhead.py --steps 20 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise RuntimeError(
            f"{cmd[:3]}... exited with {proc.returncode}; the end of its stderr:\n"
            + "\n".join(proc.stderr.splitlines()[-40:])
        )
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    params = yaml.safe_load((ROOT / "parameters/pretrain/demo.yaml").read_text())
    params.update(
        name="overhead",
        total_steps=args.steps,
        warmup_steps=min(10, args.steps - 1),
        eval_every=args.steps,
        log_every=max(1, args.steps // 5),
    )
    env = dict(os.environ, VITSCALE_BATCH="1", JAX_COMPILATION_CACHE_DIR="")  # no cache: every run compiles
    times: dict[str, list[float]] = {"library": [], "notebook": [], "kernel": []}
    with tempfile.TemporaryDirectory(prefix="overhead_") as tmp:
        tmp = Path(tmp)
        pfile = tmp / "overhead.yaml"
        pfile.write_text(yaml.safe_dump(params))
        nb = nbformat.v4.new_notebook(
            cells=[
                nbformat.v4.new_code_cell(
                    "import jax, vitscale, vitscale.train, vitscale.report.pretraining, vitscale.runs, vitscale.config"
                )
            ]
        )
        nb_file = tmp / "imports.ipynb"
        nbformat.write(nb, nb_file)
        lib_code = (
            "import sys, yaml; from vitscale import config, train; "
            "train.run(config.validate(config.PretrainConfig, yaml.safe_load(open(sys.argv[1]))), sys.argv[2])"
        )
        for i in range(args.repeats):
            order = [
                ("library", [str(BIN / "python"), "-c", lib_code, str(pfile), str(tmp / f"lib{i}")]),
                (
                    "notebook",
                    [str(BIN / "vitscale"), "run", str(pfile), "--notebook", "pretrain", "--out", str(tmp / f"nb{i}")],
                ),
                (
                    "kernel",
                    [
                        str(BIN / "papermill"),
                        "-k",
                        "vitscale",
                        "--no-progress-bar",
                        str(nb_file),
                        str(tmp / f"k{i}.ipynb"),
                    ],
                ),
            ]
            for name, cmd in order[i % 3 :] + order[: i % 3]:
                times[name].append(timed(cmd, env))
            print({k: round(v[-1], 1) for k, v in times.items()}, file=sys.stderr, flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\nPer-run overhead of papermill (a {args.steps}-step demo run; seconds, median of {args.repeats}, "
        "fresh processes, no compilation cache)\n"
    )
    print("| way | wall s (min-max) |")
    print("|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.1f} ({min(v):.1f}-{max(v):.1f}) |")
    print(
        f"\nnotebook - library: {med['notebook'] - med['library']:.1f} s per run; kernel start + imports through "
        f"papermill: {med['kernel']:.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"times": times, "params": params}, indent=1))
    return {"times": times, "median": med}


if __name__ == "__main__":
    main()
