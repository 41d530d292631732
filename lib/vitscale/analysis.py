"""Scaling analysis of a sweep: from `runs.collect` rows to fitted laws, checks and findings.

Input: rows as `runs.collect(sweep_dir)` returns them, one per trained model (a run, and each of
its cooldown branches), with `run_id`, `branch`, `variant`, `num_params`, `train_examples`,
`total_steps`, `images_seen`, `train_flops` and the final metrics under their own names
(`vitscale.metrics`: test/acc, test/loss, fewshot/<dataset>/<k>shot), analysed as errors.

Per metric, `analyze` fits the best error reachable at a given compute (the Pareto frontier of
error against `x`) with the saturating power law E = a (x + d)^-b + c of Zhai et al. (2022) and
with M4 (Alabdulmohsin et al., 2022), and checks how well each extrapolates (`scaling` holds the
math). `findings` turns the paper's qualitative claims into numbers at this scale. `run(cfg,
out_dir)` is the program the scaling notebook calls: all of it for one sweep folder.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitscale import checks, config, formats, metrics, runs, scaling, search

__all__ = [
    "Failed",
    "metric_columns",
    "analyze",
    "analyze_all",
    "write_summary",
    "findings",
    "law_label",
    "failed",
    "run_label",
    "data_label",
    "data_sort_key",
    "data_sizes",
    "variants_by_size",
    "by_group",
    "check",
    "run",
    "allocation_of",
]


@dataclass(frozen=True)
class Failed:
    """A fit or check that could not be made, and why; reports show the reason in its place and
    summary.json keeps it as {"error": reason}."""

    reason: str
    metric: str = ""
    x: str = "train_flops"

    def as_dict(self) -> dict[str, str]:
        return {"error": self.reason}


def failed(value: Any) -> bool:
    """Whether `value` stands for a fit or check that could not be made."""
    return isinstance(value, Failed)


# ----------------------------------------------------------------------------- rows
def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The accuracy metrics present in `rows`, in report order (test accuracy, then few-shot by
    dataset and shots); a loss is analysed only when asked for by name."""
    keys = {k for r in rows for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return sorted((k for k in keys if metrics.ANALYSABLE.fullmatch(k) and metrics.is_accuracy(k)), key=metrics.sort_key)


def run_label(row: Mapping[str, Any]) -> str:
    """A trained model's name: the run id, plus "/<branch>" for a cooldown branch."""
    return str(row.get("run_id")) + (f"/{row['branch']}" if row.get("branch") else "")


def data_label(train_examples: int | None) -> str:
    """How a data size is shown; None (the whole training split) is "all"."""
    return "all" if train_examples is None else f"{int(train_examples):,}"


def data_sort_key(train_examples: int | None) -> tuple[bool, float]:
    """Sort key of data sizes; None (the whole training split) is larger than any subset."""
    return (train_examples is None, 0.0 if train_examples is None else float(train_examples))


def variants_by_size(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Variants ordered by model size (parameters)."""
    size: dict[str, float] = {}
    for r in rows:
        size.setdefault(r["variant"], float(r["num_params"]))
    return sorted(size, key=lambda v: (size[v], v))


def data_sizes(rows: Sequence[Mapping[str, Any]]) -> list[int | None]:
    """The data sizes (train_examples) present, smallest first."""
    return sorted({r.get("train_examples") for r in rows}, key=data_sort_key)


def _x_of(row: Mapping[str, Any], x: str) -> float:
    v = row.get(x)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


# ----------------------------------------------------------------------------- one metric
def _extrapolation_cut(x_frontier: np.ndarray, cut_fraction: float) -> tuple[float, bool]:
    """The compute cut: the point `cut_fraction` of the way across the frontier's log-x range
    (0.5: the geometric midpoint of its smallest and largest x). If fewer than MIN_POINTS distinct
    frontier x lie below it, it moves up to just above the MIN_POINTS-th (geometric mean of that
    one and the next), so the fit has its minimum; returns (cut, moved)."""
    u = np.unique(x_frontier)
    lo, hi = math.log(u[0]), math.log(u[-1])
    cut = math.exp(lo + cut_fraction * (hi - lo))
    k = scaling.MIN_POINTS
    if np.sum(u < cut) >= k or u.size <= k:
        return cut, False
    return math.sqrt(u[k - 1] * u[k]), True


def _observations(
    rows: Sequence[Mapping[str, Any]], metric: str, x: str, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: x, the metric as error, and whether both are there; raises if none are, or any is <= 0."""
    xs = np.array([_x_of(r, x) for r in rows], dtype=float)
    es = np.array([metrics.error_of(r, metric) for r in rows], dtype=float)
    have = np.isfinite(xs) & np.isfinite(es)
    if not have.any():
        raise ValueError(
            f"{where}: none of the {len(rows)} rows has both values (metrics present: {metric_columns(rows) or 'none'})"
        )
    bad = have & ((xs <= 0) | (es <= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}: {int(bad.sum())} run(s) have x <= 0 or error <= 0 (first: {run_label(rows[i])}, "
            f"x={xs[i]:g}, error={es[i]:g}); the fits work in log space and need both > 0"
        )
    return xs, es, have


def _fit_frontier(
    x_used: np.ndarray, e_used: np.ndarray, *, n_bootstrap: int, seed: int, where: str
) -> tuple[scaling.PowerLawFit, np.ndarray]:
    """The power law fitted to the Pareto frontier and the frontier mask; a failure names `where`."""
    try:
        return scaling.frontier_fit(x_used, e_used, n_bootstrap=n_bootstrap, seed=seed)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{where} ({x_used.size} runs with this metric): {err}") from err


def _fit_m4_below_chance(
    xf: np.ndarray, ef: np.ndarray, e0: float, *, n_bootstrap: int, seed: int, where: str, metric: str, x: str
) -> scaling.M4Fit | Failed:
    """M4 on the frontier points below e0, or Failed(reason) if it cannot be fitted."""
    # M4 needs every error below e0; the points at or above chance are the cheapest frontier runs
    # and leave the frontier of the others unchanged, so they are simply left out.
    below = ef < e0
    try:
        return scaling.fit_m4(xf[below], ef[below], e0, n_bootstrap=n_bootstrap, seed=seed)
    except (ValueError, RuntimeError) as err:
        return Failed(f"{where}: M4: {err}", metric, x)


def analyze(
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str = metrics.TEST_ACC,
    x: str = "train_flops",
    n_bootstrap: int = 200,
    cut_fraction: float = 0.5,
    e0: float = 0.9,
    seed: int = 0,
    backtest_cuts: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Fit the frontier of `metric` (as error) against `x` over all rows carrying both.

    Returns a dict with
      metric, x, e0      what was fitted
      used               bool per input row: it has a finite positive x and error for this metric
      frontier           bool per input row: on the Pareto frontier (the power law's and M4's points)
      x_values, errors   float arrays per input row (NaN where not used)
      power_law          scaling.PowerLawFit on the frontier, bootstrap intervals (n_bootstrap)
      m4                 scaling.M4Fit on the frontier points below e0 (random-guess error), with
                         bootstrap intervals, or Failed(reason) if it could not be fitted
      extrapolation      scaling.extrapolation_check of both estimators: fit on frontier runs with
                         x < cut, predict those at or above it; cut = the point `cut_fraction` of
                         the way across the frontier's log-x range (0.5: geometric midpoint), moved
                         up if fewer than 4 frontier points lie below it. Failed(reason) if even
                         then nothing is left to predict; a law that cannot be fitted is Failed there.
      backtest           per law its scaling.backtest.Backtest at `backtest_cuts` (x; None: automatic), or
                         Failed; a given cut leaving a law too few runs raises ForecastError (backtest_cuts)
      summary            all of the above as JSON-safe values (no arrays or fit objects)
    Raises ValueError naming the metric, x and the counts when the power law cannot be fitted.
    """
    if not 0.0 < cut_fraction < 1.0:
        raise ValueError(f"cut_fraction must be in (0, 1), got {cut_fraction}")
    where = f"{metric} against {x}"
    xs, es, have = _observations(rows, metric, x, where)
    idx = np.flatnonzero(have)
    x_used, e_used = xs[idx], es[idx]
    backtests = _backtests(x_used, e_used, e0=e0, cuts=backtest_cuts, seed=seed)  # first: a bad cut fails fast
    pl, mask_used = _fit_frontier(x_used, e_used, n_bootstrap=n_bootstrap, seed=seed, where=where)
    frontier = np.zeros(len(rows), dtype=bool)
    frontier[idx[mask_used]] = True
    xf, ef = x_used[mask_used], e_used[mask_used]
    m4 = _fit_m4_below_chance(xf, ef, e0, n_bootstrap=n_bootstrap, seed=seed, where=where, metric=metric, x=x)
    extrap = _extrapolate(x_used, e_used, xf, e0=e0, cut_fraction=cut_fraction, seed=seed, where=where)

    result = {
        "metric": metric,
        "x": x,
        "e0": float(e0),
        "used": have,
        "frontier": frontier,
        "x_values": np.where(have, xs, np.nan),
        "errors": np.where(have, es, np.nan),
        "power_law": pl,
        "m4": m4,
        "extrapolation": extrap,
        "backtest": backtests,
    }
    result["summary"] = _summary(rows, result)
    return result


# Laws compared on every metric's extrapolation check (the M4 paper's estimators and the frontier power law).
SIMPLE_LAWS = ("power_law", "M1", "M2", "M3")
# How a report names each law of the extrapolation check.
LAW_LABELS = {"power_law": "power law", "M1": "M1", "M2": "M2", "M3": "M3", "m4": "M4"}


def law_label(name: str | None) -> str:
    """A law's name in a report ("power law", "M4"); "" for None."""
    return LAW_LABELS.get(name, name) if name else ""


def _extrapolate(
    x: np.ndarray, e: np.ndarray, xf: np.ndarray, *, e0: float, cut_fraction: float, seed: int, where: str
) -> dict[str, Any] | Failed:
    cut, moved = _extrapolation_cut(xf, cut_fraction)
    out: dict[str, Any] | None = None
    for name in SIMPLE_LAWS:  # each on its own: one law failing to fit leaves the others
        try:
            one = scaling.extrapolation_check(x, e, cut, fitters=(name,), seed=seed)
        except (ValueError, RuntimeError) as err:
            if name == "power_law":
                return Failed(f"{where}: extrapolation check: {err}")
            out["results"][name] = Failed(f"{name}: {err}")
            continue
        if out is None:
            out = one
        else:
            out["results"][name] = one["results"][name]
    # M4 on the runs below chance (same frontier minus its chance-level start; see analyze).
    ok = e < e0
    try:
        m4 = scaling.extrapolation_check(x[ok], e[ok], cut, e0=e0, fitters=("m4",), seed=seed)
        out["results"]["m4"] = m4["results"]["m4"]
    except (ValueError, RuntimeError) as err:
        out["results"]["m4"] = Failed(f"M4: {err}")
    scored = {
        k: r["rmse_log"]
        for k, r in out["results"].items()
        if not failed(r) and math.isfinite(r.get("rmse_log", math.nan))
    }
    out.update(
        cut_fraction=float(cut_fraction), cut_moved=moved, best_law=min(scored, key=scored.get) if scored else None
    )
    return out


def _backtests(x: np.ndarray, e: np.ndarray, *, e0: float, cuts, seed: int) -> dict[str, Any]:
    """Each frontier law's backtests (scaling.backtest; the nested coverage reuses the earlier cuts' fits, as
    the power law and M4 take a second or more a fit); a law that cannot be backtested is Failed."""
    out: dict[str, Any] = {}
    for name in (*SIMPLE_LAWS, "m4"):
        law = scaling.backtest.frontier_law(x, e, name, e0=e0, boot=scaling.Bootstrap(0, scaling.backtest.LEVEL, seed))
        try:
            out[name] = scaling.backtest.backtest(x, e, law, cuts, nested="earlier")
        except scaling.backtest.ForecastError:
            raise
        except (ValueError, RuntimeError) as err:
            out[name] = Failed(f"{law_label(name)}: backtest: {err}")
    return out


def _summary(rows: Sequence[Mapping[str, Any]], res: Mapping[str, Any]) -> dict[str, Any]:
    used, frontier = res["used"], res["frontier"]
    xf = res["x_values"][frontier]
    m4 = res["m4"]
    extrap = res["extrapolation"]
    if failed(extrap):
        extrap = extrap.as_dict()
    else:
        extrap = {k: v for k, v in extrap.items() if k != "results"} | {
            "results": {
                name: r.as_dict() if failed(r) else {k: v for k, v in r.items() if k != "fit"}
                for name, r in extrap["results"].items()
            }
        }
    return runs.to_jsonable(
        {
            "metric": res["metric"],
            "x": res["x"],
            "e0": res["e0"],
            "n_rows": len(rows),
            "n_runs": int(used.sum()),
            "n_frontier": int(frontier.sum()),
            "x_range": [float(np.nanmin(res["x_values"])), float(np.nanmax(res["x_values"]))],
            "frontier_runs": [run_label(r) for r, f in zip(rows, frontier) if f],
            "frontier_x": xf,
            "frontier_error": res["errors"][frontier],
            "power_law": res["power_law"].as_dict(),
            "m4": m4.as_dict(),
            "extrapolation": extrap,
            "backtest": {k: v.as_dict() for k, v in res["backtest"].items()},
        }
    )


def analyze_all(
    rows: Sequence[Mapping[str, Any]],
    names: Sequence[str] | None = None,
    *,
    e0: float | Mapping[str, float] = 0.9,
    **kw: Any,
) -> dict[str, dict[str, Any] | Failed]:
    """`analyze` for each metric (default: `metric_columns(rows)`). A metric that cannot be fitted
    maps to Failed(reason) instead of raising, so a report still shows the others. `e0` may be
    one value or a {metric: e0} mapping (metrics it omits get 0.9: 10 classes)."""
    out: dict[str, dict[str, Any] | Failed] = {}
    for m in names or metric_columns(rows):
        m_e0 = e0.get(m, 0.9) if isinstance(e0, Mapping) else e0
        try:
            out[m] = analyze(rows, metric=m, e0=m_e0, **kw)
        except scaling.backtest.ForecastError:
            raise  # a parameter that cannot serve: the caller's input error, not this metric's
        except ValueError as err:
            out[m] = Failed(str(err), m, kw.get("x", "train_flops"))
    return out


def write_summary(
    results: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    findings: Mapping[str, Any] | None = None,
    allocation: Mapping[str, Any] | None = None,
) -> Path:
    """Write `out_dir/summary.json`: per metric the fitted constants (power law a, b, c, d and M4
    with bootstrap intervals), the frontier and the extrapolation errors, or the metric's error
    message; plus `findings` ({metric: findings}) and `allocation` (allocation_of's summary) if given.
    Returns the path."""
    doc: dict[str, Any] = {"metrics": {m: (r.as_dict() if failed(r) else r["summary"]) for m, r in results.items()}}
    if findings is not None:
        doc["findings"] = runs.to_jsonable(dict(findings))
    if allocation is not None:
        doc["allocation"] = allocation.as_dict() if failed(allocation) else runs.to_jsonable(allocation["summary"])
    path = Path(out_dir) / "summary.json"
    runs.write_json(path, doc)
    return path


# ----------------------------------------------------------------------------- tables
def _interval_text(value: float, interval: Sequence[float] | None, flags: Sequence[str] = ()) -> str:
    """The text "value [lo, hi]", marked "(at bound)" when the fit sits on a constraint and "(unresolved)" when
    the interval spans more than a decade (scaling.resolved): the curve does not determine it."""
    return formats.with_interval(value, interval, flags)


# ----------------------------------------------------------------------------- findings
def _best(rows: Sequence[Mapping[str, Any]], metric: str, key) -> dict[Any, float]:
    """Best (lowest) error per group key over rows carrying the metric."""
    best: dict[Any, float] = {}
    for r in rows:
        e = metrics.error_of(r, metric)
        if math.isfinite(e):
            k = key(r)
            best[k] = min(best.get(k, math.inf), e)
    return best


def _finding_saturation(rows, metric) -> dict[str, Any]:
    claim = (
        "small models saturate with more data: from the middle to the largest data size the smallest "
        "model's error improves less than the largest model's"
    )
    variants, sizes = variants_by_size(rows), data_sizes(rows)
    out: dict[str, Any] = {"claim": claim, "holds": None}
    if len(variants) < 2 or len(sizes) < 2:
        return out | {
            "verdict": f"not testable: needs 2+ model sizes and 2+ data sizes (have {len(variants)} and {len(sizes)})"
        }
    best = _best(rows, metric, lambda r: (r["variant"], r.get("train_examples")))
    mid, top = sizes[(len(sizes) - 1) // 2], sizes[-1]
    small, large = variants[0], variants[-1]
    missing = [(v, d) for v in (small, large) for d in (mid, top) if (v, d) not in best]
    if missing:
        return out | {"verdict": "not testable: no run for " + ", ".join(f"{v} on {data_label(d)}" for v, d in missing)}
    d_small = best[small, mid] - best[small, top]
    d_large = best[large, mid] - best[large, top]
    holds = d_small < d_large
    verdict = (
        f"{small}: {100 * d_small:+.2f} points of error from {data_label(mid)} to {data_label(top)} images, "
        f"{large}: {100 * d_large:+.2f}; "
        + (
            "the small model gains less: consistent with the paper"
            if holds
            else "the small model gains as much or more: not seen at this scale"
        )
    )
    return out | {
        "holds": holds,
        "verdict": verdict,
        "smallest_model": small,
        "largest_model": large,
        "middle_data": mid,
        "largest_data": top,
        "smallest_improvement": d_small,
        "largest_improvement": d_large,
        "smallest_relative_improvement": d_small / best[small, mid],
        "largest_relative_improvement": d_large / best[large, mid],
        "best_error": {f"{v} @ {data_label(d)}": best[v, d] for v in (small, large) for d in (mid, top)},
    }


def _finding_sample_efficiency(rows, metric) -> dict[str, Any]:
    claim = "bigger models are more sample-efficient: at equal images seen they reach lower error"
    out: dict[str, Any] = {"claim": claim, "holds": None}
    sizes = data_sizes(rows)
    top = sizes[-1] if sizes else None
    on_top = [r for r in rows if r.get("train_examples") == top]
    variants = variants_by_size(on_top)
    if len(variants) < 2:
        return out | {"verdict": f"not testable: needs 2+ model sizes on the largest data size (have {len(variants)})"}
    best = _best(on_top, metric, lambda r: (r["variant"], int(r["images_seen"])))
    pairs, wins, total = [], 0, 0
    for small, big in zip(variants, variants[1:]):
        seen = sorted({i for v, i in best if v == small} & {i for v, i in best if v == big})
        w = sum(best[big, i] < best[small, i] for i in seen)
        pairs.append(
            {
                "smaller": small,
                "bigger": big,
                "matched": len(seen),
                "bigger_better": w,
                "fraction": w / len(seen) if seen else None,
            }
        )
        wins, total = wins + w, total + len(seen)
    if total == 0:
        return out | {"verdict": "not testable: adjacent model sizes share no images-seen value", "pairs": pairs}
    frac = wins / total
    holds = frac > 0.5
    per_pair = ", ".join(f"{p['smaller']}→{p['bigger']} {p['bigger_better']}/{p['matched']}" for p in pairs)
    verdict = (
        f"on {data_label(top)} images the bigger model had lower error at equal images seen in {wins}/{total} "
        f"comparisons ({per_pair}): " + ("consistent with the paper" if holds else "not seen at this scale")
    )
    return out | {
        "holds": holds,
        "verdict": verdict,
        "data": top,
        "fraction": frac,
        "matched": total,
        "bigger_better": wins,
        "pairs": pairs,
    }


def _unresolved_fit(pl: scaling.PowerLawFit, n_constants: int = 4) -> str | None:
    """Why the frontier fit cannot back a yes or a no about c and d (None when it can): too few
    points for its constants, no bootstrap, an estimate outside its interval, or a constant on a
    bound the data put it against (b at either end, c at min(error), d at the largest compute)."""
    if pl.n <= n_constants:
        return f"{pl.n} frontier points for {n_constants} constants: the curve passes through them, nothing is tested"
    if not pl.intervals:
        return "no bootstrap intervals (n_bootstrap = 0)"
    outside = [k for k in ("c", "d") if not pl.intervals[k][0] <= getattr(pl, k) <= pl.intervals[k][1]]
    if outside:
        return f"{', '.join(outside)} outside {'its' if len(outside) == 1 else 'their'} bootstrap interval"
    on_edge = [k for k in pl.at_bound if k == "b" or (k in "cd" and getattr(pl, k) > 0)]
    if on_edge:
        return f"{', '.join(on_edge)} on {'its' if len(on_edge) == 1 else 'their'} bound: the data do not determine it"
    return None


def _finding_double_saturation(result: Mapping[str, Any] | Failed) -> dict[str, Any]:
    claim = (
        "double saturation: the frontier fit has an error floor c > 0 and a low-compute bend d > 0 "
        "(bootstrap intervals exclude 0)"
    )
    out: dict[str, Any] = {"claim": claim, "holds": None}
    if failed(result):
        return out | {"verdict": f"not testable: {result.reason}"}
    pl: scaling.PowerLawFit = result["power_law"]
    iv = pl.intervals
    x_min = float(np.min(result["x_values"][result["frontier"]]))
    numbers = {
        "c": pl.c,
        "c_interval": iv.get("c"),
        "d": pl.d,
        "d_interval": iv.get("d"),
        "d_over_min_x": pl.d / x_min,
        "x": result["x"],
    }
    txt = (
        f"c = {_interval_text(pl.c, iv.get('c'))}, d = {_interval_text(pl.d, iv.get('d'))} "
        f"({formats.number(pl.d / x_min, 2)} x the smallest frontier {result['x']}); "
    )
    if why := _unresolved_fit(pl):
        return out | numbers | {"verdict": f"not testable: {why} ({txt.rstrip('; ')})"}
    c_pos, d_pos = iv["c"][0] > 0, iv["d"][0] > 0
    if c_pos and d_pos:
        txt += "both > 0 (interval): both saturations visible"
    elif c_pos:
        txt += "only the error floor c > 0 (interval): no low-compute bend"
    elif d_pos:
        txt += "only the low-compute bend d > 0 (interval): no error floor within reach"
    else:
        txt += "neither > 0 (interval): a plain power law fits"
    return out | numbers | {"holds": bool(c_pos and d_pos), "verdict": txt}


def findings(
    rows: Sequence[Mapping[str, Any]],
    metric: str = metrics.TEST_ACC,
    *,
    result: Mapping[str, Any] | None = None,
    **analyze_kw: Any,
) -> dict[str, dict[str, Any]]:
    """The paper's qualitative claims checked on this sweep, each as numbers, `holds` (True,
    False, or None when the sweep cannot test it) and a one-line `verdict`:

      saturation         for the smallest model, the error improvement from the middle to the
                         largest data size (best over training lengths) is smaller than the
                         largest model's (both improvements reported)
      sample_efficiency  on the largest data size, for each pair of adjacent model sizes, how often
                         the bigger one has lower error at the same images seen (holds: > half)
      double_saturation  the frontier power law's c > 0 and d > 0, by their bootstrap intervals

    `result` is `analyze(rows, metric=metric)` (or its Failed) if already computed; else it is
    computed here with `analyze_kw`. A claim is True or False only when the numbers behind it
    can decide it; otherwise None, and the verdict says "not testable" and why.
    """
    if result is None:
        try:
            result = analyze(rows, metric=metric, **analyze_kw)
        except ValueError as err:
            result = Failed(str(err), metric)
    have = [r for r in rows if math.isfinite(metrics.error_of(r, metric))]
    return runs.to_jsonable(
        {
            "saturation": _finding_saturation(have, metric),
            "sample_efficiency": _finding_sample_efficiency(have, metric),
            "double_saturation": _finding_double_saturation(result),
        }
    )


def by_group(rows: Sequence[Mapping[str, Any]], metric: str, *keys: str) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows carrying `metric`, grouped by the values of `keys` (used by the plots)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if math.isfinite(metrics.error_of(r, metric)):
            groups[tuple(r.get(k) for k in keys)].append(r)
    return groups


# ----------------------------------------------------------------------------- the program
def check(cfg: config.ScalingConfig) -> None:
    """The sweep folder exists and holds finished pretraining runs."""
    problems: list[config.Problem] = []
    if not Path(cfg.sweep_dir).is_dir():
        problems.append(
            config.Problem(
                "sweep_dir",
                f"{cfg.sweep_dir!r} is not a folder (accepted: a sweep's output folder, e.g. outputs/cpu_scaling)",
            )
        )
    checks.raise_problems(problems)


def run(cfg: config.ScalingConfig, out_dir: str | Path, *, checked: bool = False) -> dict[str, Any]:
    """`_run` as the one writer of `out_dir` (runs.lock; a notebook started by `vitscale run` writes
    under its lock). A parameter the sweep cannot serve (a backtest cut that leaves a law too few runs)
    is a ConfigError naming it, raised before anything is written. `checked`: the caller has run
    `check(cfg)` on these values (notebooks.check), so it is not run again."""
    if not checked:
        check(cfg)
    rows, searched = runs.collect_searched(cfg.sweep_dir)
    try:
        results = analyze_all(rows, cfg.metrics, x=cfg.x, n_bootstrap=cfg.n_bootstrap, backtest_cuts=cfg.backtest_cuts)
        alloc = allocation_of(
            rows, budgets=cfg.budgets, n_bootstrap=min(cfg.n_bootstrap, 100), repetition_=cfg.repetition,
            backtest_cuts=cfg.backtest_cuts,
        )  # fmt: skip
    except scaling.backtest.ForecastError as e:
        raise config.ConfigError([config.Problem(e.field, e.message)]) from None
    with runs.writer(out_dir):
        return _run(rows, searched, results, alloc, out_dir)


def _run(rows, searched, results, alloc, out_dir: str | Path) -> dict[str, Any]:
    """Findings on each metric's fits; writes out_dir/summary.json (with the search's choices, if any) and
    returns {"rows", "results", "findings", "allocation", "search"} (findings per metric, like results)."""
    found = {m: findings(rows, m, result=r) for m, r in results.items()}
    path = write_summary(results, out_dir, findings=found, allocation=alloc)
    if searched["choices"]:
        doc = runs.read_json(path) | {"search": runs.to_jsonable(search_summary(searched))}
        runs.write_json(path, doc)
    return {"rows": rows, "results": results, "findings": found, "allocation": alloc, "search": searched}


def search_summary(searched: Mapping[str, Any]) -> dict[str, Any]:
    """summary.json's "search": per point what won, what was tried, the edges; and the rate law."""
    law = searched["rate_law"]
    return {
        "keys": searched["keys"],
        "points": [c.as_dict() for c in searched["choices"]],
        "at_edge": sum(any(c.at_edge.values()) for c in searched["choices"]),
        "rate_law": law.as_dict() if isinstance(law, search.RateLaw) else law,
    }


def allocation_of(
    rows: Sequence[Mapping[str, Any]], *, metric: str = metrics.TEST_ACC, budgets: Any = None, **kw: Any
) -> dict[str, Any] | Failed:
    """Compute-optimal allocation of `metric`'s error over the rows (scaling.allocation.allocate: the
    joint law, IsoFLOP profiles, envelope, plans at `budgets`), or Failed when the sweep cannot
    support it (too few runs, a fit that fails)."""
    pts = scaling.table.from_rows(rows, metrics.error_of, metric=metric)
    if len(pts.N) < scaling.table.MIN_ROWS:
        need = scaling.table.MIN_ROWS
        return Failed(f"allocation: {len(pts.N)} trained models carry {metric}; the joint law needs {need}", metric)
    try:
        return scaling.allocation.allocate(pts, budgets=budgets, **kw)
    except scaling.backtest.ForecastError:
        raise
    except (ValueError, RuntimeError) as err:
        return Failed(f"allocation: {err}", metric)
