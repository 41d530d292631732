"""Learning-curve extrapolation of every scaling law in vitscale.scaling, on the M4 paper's benchmark.

Reads curves in the format of the public benchmark of Alabdulmohsin, Neyshabur & Zhai, "Revisiting
Neural Scaling Laws in Language and Vision" (NeurIPS 2022; google-research/google-research,
revisiting_neural_scaling_laws/data/benchmark.vision.csv): columns Domain, Task, Model, Seen
Examples, Loss, Training. Per curve (Domain, Task, Model) every law is fitted on the Training=1 rows
and scored on the Training=0 rows by the RMSE of log loss, as the paper does; the table gives the
per-curve values and their mean over curves.

    python benchmarks/scaling_laws.py                                   # the shipped subset
    python benchmarks/scaling_laws.py --csv benchmark.vision.csv --domain IC
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitscale import scaling

DEFAULT_CSV = Path(__file__).resolve().parent.parent / "tests" / "data" / "scaling_benchmark_vision.csv"
COLUMNS = ("Domain", "Task", "Model", "Seen Examples", "Loss", "Training")
#: the estimators scored: fit_law names, plus M4 with e0 held at the random-guess error (the ablation)
ESTIMATORS = ("power_law", "M1", "M2", "M3", "M4", "M4_fixed_e0")
#: M4's random-guess error: the value the authors' README passes (err_0=0.999); learned from there
E0 = 0.999


def read_curves(path: str | Path, domain: str | None = None) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
    """Curves of a benchmark CSV: {(domain, task, model): {x, e, x_test, e_test}} in file order."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the benchmark format has {list(COLUMNS)}")
        raw: dict[tuple[str, str, str], list[list[float]]] = {}
        for i, row in enumerate(reader, start=2):
            if domain is not None and row["Domain"] != domain:
                continue
            if row["Training"] not in ("0", "1"):
                raise ValueError(f"{path}:{i}: Training must be 0 or 1, got {row['Training']!r}")
            key = (row["Domain"], row["Task"], row["Model"])
            lists = raw.setdefault(key, [[], [], [], []])
            j = 0 if row["Training"] == "1" else 2
            lists[j].append(float(row["Seen Examples"]))
            lists[j + 1].append(float(row["Loss"]))
    if not raw:
        raise ValueError(f"{path}: no curves" + (f" in domain {domain!r}" if domain else ""))
    return {k: dict(zip(("x", "e", "x_test", "e_test"), map(np.asarray, v))) for k, v in raw.items()}


def fit_estimator(name: str, x: np.ndarray, e: np.ndarray) -> Any:
    """Fit one estimator of ESTIMATORS on a training curve."""
    e0 = E0 if e.max() < E0 else None  # losses above 1 (language): no random-guess error, e0 is learned
    if name == "M4_fixed_e0":
        if e0 is None:
            raise ValueError(f"M4_fixed_e0 needs every loss below e0={E0}; max is {e.max():g}")
        return scaling.fit_m4(x, e, e0, learn_e0=False)
    return scaling.fit_law(name, x, e, e0=e0)


def run(curves: dict[tuple[str, str, str], dict[str, np.ndarray]]) -> dict[str, Any]:
    """RMSE(log loss) on the held-out rows for every curve and estimator, and the mean per estimator."""
    rows = []
    for key, c in curves.items():
        if c["x_test"].size == 0:
            continue
        row: dict[str, Any] = {"curve": "/".join(key), "n_train": int(c["x"].size), "n_test": int(c["x_test"].size)}
        for name in ESTIMATORS:
            t0 = time.perf_counter()
            try:
                fit = fit_estimator(name, c["x"], c["e"])
                row[name] = fit.rmse_log_on(c["x_test"], c["e_test"])
                row[name + ":at_bound"] = list(fit.at_bound)
            except (ValueError, RuntimeError) as err:
                row[name] = float("nan")
                row[name + ":error"] = str(err)
            row[name + ":seconds"] = time.perf_counter() - t0
        rows.append(row)
    mean = {n: float(np.nanmean([r[n] for r in rows])) for n in ESTIMATORS}
    return {"curves": rows, "mean": mean}


def table(res: dict[str, Any]) -> str:
    """Plain-text table: one line per curve, RMSE(log) per estimator (* = a parameter on a bound)."""
    w = max(len("curve"), *(len(r["curve"]) for r in res["curves"]))
    head = f"{'curve':<{w}} " + " ".join(f"{n:>12}" for n in ESTIMATORS)
    lines = [head, "-" * len(head)]
    for r in res["curves"]:
        cells = []
        for n in ESTIMATORS:
            v = r[n]
            mark = "*" if r.get(n + ":at_bound") else " "
            cells.append(f"{'failed':>11} " if math.isnan(v) else f"{v:>11.5f}{mark}")
        lines.append(f"{r['curve']:<{w}} " + " ".join(cells))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<{w}} " + " ".join(f"{res['mean'][n]:>11.5f} " for n in ESTIMATORS))
    lines.append("* the fit left a parameter on a bound (see --json for which)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default=str(DEFAULT_CSV), help="benchmark CSV (default: the shipped subset)")
    ap.add_argument("--domain", default=None, help="only curves of this Domain (IC, NMT, LM, BB)")
    ap.add_argument("--json", default=None, help="also write the full results (per-curve bounds, times) here")
    args = ap.parse_args(argv)
    res = run(read_curves(args.csv, args.domain))
    print(table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
