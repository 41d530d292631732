"""The scaling section's words and tables (scaling_analysis.ipynb): the headline (each metric's law,
which law extrapolates best, the findings, the next run), the fitted constants, the findings and the
runs as tables. `analysis` returns the values; this module turns them into rows and sentences."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from vitscale import analysis, formats, metrics
from vitscale.report import page
from vitscale.report.scaling_figures import (
    metric_title,
    ordered,
    scaling_best_vs_size,
    scaling_error_vs_compute,
    scaling_error_vs_images,
    scaling_extrapolation,
)

# How the scaling tables show their numbers.
_RUN_FORMATS = {
    "params": formats.count,
    "train FLOPs": formats.flops,
    "images seen": formats.integer,
    "steps": formats.integer,
}


def scaling_constants_table(results: dict[str, Any]) -> page.Html:
    """Fitted constants, one column per metric: power law a, b, c, d and M4 (with bootstrap
    intervals), the extrapolation errors, and why a metric could not be fitted."""
    per_metric = constants_rows({m: results[m] for m in ordered(results)})
    if not per_metric:
        return page.paragraph("No metric to fit.")
    quantities = list(dict.fromkeys(k for r in per_metric for k in r if k != "metric"))
    rows = [{"quantity": q, **{r["metric"]: r.get(q, "") for r in per_metric}} for q in quantities]
    return page.table(
        rows,
        ["quantity"] + [r["metric"] for r in per_metric],
        title="frontier fits: E = a (x + d)^-b + c and M4 [95% bootstrap intervals]",
    )


def scaling_findings_table(found: dict[str, dict[str, Any]]) -> page.Html:
    """The paper's claims checked on this sweep, per metric (`analysis.findings`): holds, and the numbers."""
    rows = [{"metric": metric_title(m), **r} for m in ordered(found) for r in findings_rows(found[m])]
    return page.table(rows, ["metric", "finding", "holds", "verdict"], title="findings at this scale")


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def scaling_runs_table(rows: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> page.Html:
    """Every trained model of the sweep with its size, data, length, compute and errors."""
    names = list(names or analysis.metric_columns(rows))
    rows = sorted(
        rows,
        key=lambda r: (
            r.get("num_params") or 0,
            analysis.data_sort_key(r.get("train_examples")),
            r.get("images_seen") or 0,
            analysis.run_label(r),
        ),
    )
    out = [
        {
            "model": analysis.run_label(r),
            "variant": r.get("variant"),
            "params": r.get("num_params"),
            "train images": analysis.data_label(r.get("train_examples")),
            "steps": r.get("total_steps"),
            "images seen": r.get("images_seen"),
            "train FLOPs": r.get("train_flops"),
            **{metric_title(m): _finite_or_none(metrics.error_of(r, m)) for m in names},
        }
        for r in rows
    ]
    if not out:
        return page.paragraph("No finished run in this sweep.")
    shown = _RUN_FORMATS | {metric_title(m): formats.percent for m in names}
    return page.table(
        out, title=f"{len(out)} trained models (runs and cooldown branches)", formats=shown, table_id="runs"
    )


def _law_text(result: dict[str, Any]) -> str:
    """The frontier law with its resolved constants; unresolved ones are only named (their values and
    intervals are in the details)."""
    pl = result["power_law"]
    iv, unresolved = pl.intervals, set(pl.as_dict().get("unresolved") or [])
    marks = {k: flags(pl.as_dict(), k) for k in "abcd"}
    shown = []
    for k in "abcd":
        if k in unresolved:
            continue
        if k == "c":
            shown.append(
                "c (error floor) = " + formats.percent(pl.c, iv.get("c")) + "".join(f" ({f})" for f in marks["c"])
            )
        else:
            shown.append(f"{k} = {formats.with_interval(getattr(pl, k), iv.get(k), marks[k])}")
    text = f"E = a (x + d)^-b + c on {pl.n} frontier points: " + (", ".join(shown) or "no constant resolved")
    if unresolved:
        text += f"; unresolved (see the details): {', '.join(sorted(unresolved))}"
    return text


def _extrapolation_text(result: dict[str, Any]) -> str:
    ex = result["extrapolation"]
    if analysis.failed(ex):
        return f"Extrapolation: not checked ({ex.reason})."
    scored = sorted(
        (r["rmse_log"], name, r)
        for name, r in ex["results"].items()
        if not analysis.failed(r) and math.isfinite(r.get("rmse_log", math.nan))
    )
    if not scored:
        return "Extrapolation: no law could be fitted below the cut."
    (best, name, r), rest = scored[0], scored[1:]
    txt = (
        f"Extrapolates best: {analysis.law_label(name)}, fitted on {ex['n_train']} runs below "
        f"{formats.flops(ex['cut']) if result['x'] == 'train_flops' else formats.number(ex['cut'], 3)}, "
        f"predicts the {ex['n_test']} above within {formats.percent(r['mare'])} on average (RMSE of log error "
        f"{formats.number(best, 3)})"
    )
    if rest:
        second, name2, _ = rest[0]
        ratio = f"{second / best:.2f}x" if best > 0 else "infinitely"
        txt += f"; next: {analysis.law_label(name2)}, {ratio} the error"
    return txt + "."


def next_run_text(allocation: Any) -> str:
    """The headline's recommendation in a sentence: the compute-optimal next run at the largest planned
    budget, or why the study cannot give one."""
    if analysis.failed(allocation):
        return f"Next run: none recommended ({allocation.reason})."
    s = allocation["summary"]
    p = s["plans"][-1]
    if not p["determined"]:
        return (
            f"Next run at {formats.flops(p['C'])} FLOPs: not determined by this study (see Allocation: "
            "the model-size or data term is a step, not a power law)."
        )
    iv = p.get("error_interval")
    where = "extrapolating beyond the study" if p["extrapolates"] else "within the study's range"
    return (
        f"Next run at {formats.flops(p['C'])} FLOPs: {formats.count(p['N'])} parameters on {formats.count(p['D'])} "
        f"images seen, predicted error {formats.percent(p['error'], iv)} ({where}; details in Allocation)."
    )


def _bracket(iv: Sequence[float] | None) -> str:
    """An error interval in percent, `[11.0, 13.5]`; empty without one."""
    return f"[{100 * iv[0]:.3g}, {100 * iv[1]:.3g}]" if iv else ""


def next_run_table(rec: Mapping[str, Any]) -> page.Html:
    """The recommended run (plan.recommend) as one row: what to train, for how long, at what rate, and what
    it should reach, with the prediction interval's measured coverage beside its nominal level."""
    level, cov = rec.get("error_interval_level"), rec.get("error_interval_coverage")
    coverage = (
        ""
        if level is None
        else f"{level:.0%} nominal, "
        + ("coverage not measured (too few runs)" if cov is None else f"{cov:.0%} in backtests")
    )
    row = {
        "budget": formats.flops(rec["C"]),
        "model": f"{rec['variant']} ({formats.count(rec['params'])} parameters; N* {formats.count(rec['N'])})",
        "training": f"{formats.integer(rec['total_steps'])} steps, {formats.count(rec['images'])} images seen",
        "learning rate": f"{rec['lr']:.3g}",
        "predicted error [prediction interval]": formats.percent(rec["error"], rec.get("error_interval")),
        "interval's coverage": coverage,
        "parameter interval": _bracket(rec.get("error_parameter_interval")),
    }
    return page.section(page.table([row], title="Recommended next run"), page.paragraph(rec["rate"]))


def scaling_headline(
    results: dict[str, Any],
    found: dict[str, dict[str, Any]],
    allocation: Any = None,
    *,
    rows: Sequence[dict[str, Any]] = (),
    next_run: Mapping[str, Any] | None = None,
) -> page.Html:
    """The answer first: the recommended next run (when the allocation analysis gave one; with `next_run`,
    plan.recommend's record, its size, steps and rate) and the upstream metric's frontier with its law
    (given the `rows`); then per metric (upstream first) the law's resolved constants, which law
    extrapolates best and by how much, and the findings that hold (and which cannot be tested)."""
    blocks = []
    if allocation is not None:
        blocks.append(page.paragraph(next_run_text(allocation)))
    if next_run is not None and "variant" in next_run and not analysis.failed(allocation):
        blocks.append(next_run_table(next_run))
    first = next((m for m in ordered(results) if not analysis.failed(results[m])), None)
    if rows and first is not None:
        blocks.append(scaling_error_vs_compute(rows, results[first], first))
    for metric in ordered(results):
        result, title = results[metric], metric_title(metric)
        if analysis.failed(result):
            blocks.append(
                page.section(
                    page.Html(f"<h3>{html.escape(title)}</h3>"), page.paragraph(f"Not fitted: {result.reason}")
                )
            )
            continue
        lines = [_law_text(result), _extrapolation_text(result)]
        f = found.get(metric, {})
        held = [k.replace("_", " ") for k, v in f.items() if v["holds"] is True]
        failed = [k.replace("_", " ") for k, v in f.items() if v["holds"] is False]
        untested = [k.replace("_", " ") for k, v in f.items() if v["holds"] is None]
        lines.append(
            "Findings that hold: "
            + (", ".join(held) or "none")
            + (f"; do not hold: {', '.join(failed)}" if failed else "")
            + (f"; not testable: {', '.join(untested)}" if untested else "")
            + "."
        )
        items = "".join(f"<li>{html.escape(t)}</li>" for t in lines)
        blocks.append(page.Html(f"<h3>{html.escape(title)}</h3><ul>{items}</ul>"))
    return page.section(*blocks, css="vs-headline")


def scaling_details(rows: Sequence[dict[str, Any]], results: dict[str, Any], found: dict[str, Any]) -> page.Html:
    """Per metric (upstream first), collapsed: its constants, its findings and its four figures."""
    parts = []
    for metric in ordered(results):
        parts.append(
            page.details(
                f"Details: {metric_title(metric)}",
                scaling_constants_table({metric: results[metric]}),
                scaling_findings_table({metric: found[metric]} if metric in found else {}),
                scaling_error_vs_compute(rows, results[metric], metric),
                scaling_extrapolation(results[metric]),
                scaling_best_vs_size(rows, metric),
                scaling_error_vs_images(rows, metric),
            )
        )
    return page.section(*parts)


def flags(fit: Mapping[str, Any], name: str) -> list[str]:
    """The marks of a fitted constant: "at bound" (on a constraint), "unresolved" (interval over a decade)."""
    return [f for f, key in (("at bound", "at_bound"), ("unresolved", "unresolved")) if name in fit.get(key, ())]


def constants_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One table row per metric: run counts, the power law's a, b, c, d and M4's e_inf, alpha, c
    (with bootstrap intervals), and both estimators' extrapolation error (RMSE of log error)."""
    out = []
    for m, r in results.items():
        if analysis.failed(r):
            out.append({"metric": m, "runs": "", "frontier": "", "note": r.reason})
            continue
        s = r["summary"]
        pl, iv = s["power_law"], s["power_law"]["intervals"]
        row = {"metric": m, "runs": s["n_runs"], "frontier": s["n_frontier"]}
        row |= {k: formats.with_interval(pl[k], iv.get(k), flags(pl, k)) for k in "abcd"}
        m4 = s["m4"]
        if "error" in m4:
            row |= {"M4 e_inf": "", "M4 alpha": "", "M4 c": ""}
        else:
            row |= {
                f"M4 {k}": formats.with_interval(m4[k], m4["intervals"].get(k), flags(m4, k))
                for k in ("e_inf", "alpha", "c")
            }
        ex = s["extrapolation"]
        for name, label in analysis.LAW_LABELS.items():
            rr = ex.get("results", {}).get(name, {})
            row[f"extrap. RMSE log, {label}"] = rr.get("rmse_log", "")
        row["extrapolates best"] = analysis.law_label(ex.get("best_law"))
        notes = [x.get("error") for x in (m4, ex) if "error" in x]
        notes += [rr["error"] for rr in ex.get("results", {}).values() if "error" in rr]
        row["note"] = "; ".join(notes)
        out.append(row)
    return out


def findings_rows(found: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The findings as table rows: claim, holds (yes/no/untestable) and verdict."""
    word = {True: "yes", False: "no", None: "not testable"}
    return [
        {"finding": k, "claim": f["claim"], "holds": word[f["holds"]], "verdict": f["verdict"]}
        for k, f in found.items()
    ]
