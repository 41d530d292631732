"""The scaling figures (scaling_analysis.ipynb): error against compute with the fitted laws, the
extrapolation check, best error against model size, error against images seen. Rows are
`runs.collect` rows, results come from `analysis.analyze` / `analyze_all`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from vitscale import analysis, metrics
from vitscale.report.page import Sentence

_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")


_X_TITLES = {
    "train_flops": "training compute (FLOPs)",
    "images_seen": "images seen",
    "device_seconds": "device-seconds",
    "num_params": "parameters",
    "train_examples": "training images",
}


_HOVER = (
    "%{customdata[0]}<br>%{customdata[1]}, %{customdata[2]} training images<br>"
    "%{customdata[3]} steps, %{customdata[4]:,} images seen<br>x=%{x:.3g}, error=%{y:.4g}<extra></extra>"
)


def _x_title(x: str) -> str:
    return _X_TITLES.get(x, x.replace("_", " "))


def metric_title(metric: str) -> str:
    return metrics.title(metric)


def ordered(results: dict[str, Any]) -> list[str]:
    """Metrics in report order: upstream (test) first, then few-shot by dataset and shots."""
    return sorted(results, key=metrics.sort_key)


def _hover_data(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            analysis.run_label(r),
            r.get("variant"),
            analysis.data_label(r.get("train_examples")),
            r.get("total_steps"),
            r.get("images_seen"),
        ]
        for r in rows
    ]


def _colors(variants: Sequence[str]) -> dict[str, str]:
    palette = pio.templates["plotly"].layout.colorway
    return {v: palette[i % len(palette)] for i, v in enumerate(variants)}


def _with_x(rows: Sequence[dict[str, Any]], metric: str, x: str) -> list[dict[str, Any]]:
    return [
        r
        for r in rows
        if math.isfinite(metrics.error_of(r, metric)) and isinstance(r.get(x), (int, float)) and r[x] > 0
    ]


def _add_run_traces(fig: go.Figure, have: Sequence[dict[str, Any]], metric: str, x: str) -> str:
    """One marker trace per model size (colour), data size as marker symbol; returns the symbols' legend text."""
    variants, sizes = analysis.variants_by_size(have), analysis.data_sizes(have)
    colors = _colors(variants)
    for v in variants:
        rs = [r for r in have if r["variant"] == v]
        fig.add_trace(
            go.Scatter(
                x=[r[x] for r in rs],
                y=[metrics.error_of(r, metric) for r in rs],
                mode="markers",
                name=v,
                marker=dict(
                    color=colors[v],
                    size=8,
                    symbol=[_SYMBOLS[sizes.index(r.get("train_examples")) % len(_SYMBOLS)] for r in rs],
                ),
                customdata=_hover_data(rs),
                hovertemplate=_HOVER,
            )
        )
    return ", ".join(f"{_SYMBOLS[i % len(_SYMBOLS)]} {analysis.data_label(d)}" for i, d in enumerate(sizes))


def _add_frontier_trace(
    fig: go.Figure, rows: Sequence[dict[str, Any]], frontier: Sequence[bool], metric: str, x: str
) -> None:
    """The Pareto frontier's runs, ringed and joined by a step line in order of x."""
    front = [r for r, f in zip(rows, frontier) if f]
    front.sort(key=lambda r: r[x])
    fig.add_trace(
        go.Scatter(
            x=[r[x] for r in front],
            y=[metrics.error_of(r, metric) for r in front],
            mode="lines+markers",
            name="Pareto frontier",
            line=dict(color="black", width=1, shape="hv"),
            marker=dict(symbol="circle-open", size=14, color="black", line=dict(width=2)),
            customdata=_hover_data(front),
            hovertemplate=_HOVER,
        )
    )


def _add_fit_traces(fig: go.Figure, result: dict[str, Any]) -> None:
    """The power law's bootstrap band (if bootstrapped), its curve and M4's (if fitted), to 2x the largest x."""
    xs = result["x_values"][result["used"]]
    grid = np.geomspace(xs.min(), 2 * xs.max(), 200)
    pl = result["power_law"]
    if pl.bootstrap_params.shape[0]:
        lo, hi = pl.predict_band(grid)
        fig.add_trace(
            go.Scatter(
                x=np.r_[grid, grid[::-1]],
                y=np.r_[hi, lo[::-1]],
                fill="toself",
                mode="lines",
                line=dict(width=0),
                fillcolor="rgba(0,0,0,0.12)",
                hoverinfo="skip",
                name=f"power law, {100 * pl.ci_level:.0f}% bootstrap band ({pl.n_bootstrap})",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=pl.predict(grid),
            mode="lines",
            line=dict(color="black", width=2),
            name=f"E = {pl.a:.3g} (C + {pl.d:.3g})^-{pl.b:.3g} + {pl.c:.3g}",
        )
    )
    m4 = result["m4"]
    if not analysis.failed(m4):
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=m4.predict(grid),
                mode="lines",
                line=dict(color="firebrick", width=2, dash="dash"),
                name=f"M4: e_inf={m4.e_inf:.3g}, alpha={m4.alpha:.3g}, c={m4.c:.3g}",
            )
        )


def scaling_error_vs_compute(
    rows: Sequence[dict[str, Any]],
    result: dict[str, Any] | analysis.Failed,
    metric: str | None = None,
) -> go.Figure | Sentence:
    """Error against compute (log-log) for every trained model, one colour per model size and one
    marker per data size; the Pareto frontier ringed; the power law fitted to it with its bootstrap
    band, and the M4 fit. Traces: one per model size, then frontier, band, power law, M4 (each if
    fitted). Without a fit the runs are drawn and the reason is in the title; without runs, a sentence."""
    fail = analysis.failed(result)
    metric = metric or (result.metric if fail else result["metric"])
    x = result.x if fail else result["x"]
    have = _with_x(rows, metric, x)
    if not have:
        return Sentence(f"No run has {metric_title(metric)} and {_x_title(x)}: nothing to draw.")
    fig = go.Figure()
    marks = _add_run_traces(fig, have, metric, x)
    title = f"{metric_title(metric)} against {_x_title(x)} (markers: training images, {marks})"
    if fail:
        title += f"<br>no fit: {result.reason}"
    else:
        _add_frontier_trace(fig, rows, result["frontier"], metric, x)
        _add_fit_traces(fig, result)
    fig.update_xaxes(type="log", title_text=_x_title(x))
    fig.update_yaxes(type="log", title_text=metric_title(metric))
    fig.update_layout(title=title, height=520, legend=dict(font=dict(size=11)))
    return fig


def scaling_best_vs_size(rows: Sequence[dict[str, Any]], metric: str = metrics.TEST_ACC) -> go.Figure | Sentence:
    """Best error (over training lengths) against parameters, one line per data size (log-log)."""
    groups = analysis.by_group(rows, metric, "train_examples", "variant")
    if not groups:
        return Sentence(f"No run has {metric_title(metric)}: no best error per model size.")
    sizes = sorted({d for d, _ in groups}, key=analysis.data_sort_key)
    fig = go.Figure()
    for d in sizes:
        best = [min(rs, key=lambda r: metrics.error_of(r, metric)) for (dd, _), rs in groups.items() if dd == d]
        best.sort(key=lambda r: r["num_params"])
        fig.add_trace(
            go.Scatter(
                x=[r["num_params"] for r in best],
                y=[metrics.error_of(r, metric) for r in best],
                mode="lines+markers",
                name=f"{analysis.data_label(d)} images",
                customdata=_hover_data(best),
                hovertemplate=_HOVER,
            )
        )
    fig.update_xaxes(type="log", title_text="parameters")
    fig.update_yaxes(type="log", title_text=f"best {metric_title(metric)}")
    fig.update_layout(title=f"best {metric_title(metric)} against model size, per data size", height=420)
    return fig


def scaling_error_vs_images(rows: Sequence[dict[str, Any]], metric: str = metrics.TEST_ACC) -> go.Figure | Sentence:
    """Error against images seen, one facet per data size and one line per model size (the best
    run or cooldown branch at each images-seen value); log-log."""
    groups = analysis.by_group(rows, metric, "train_examples", "variant")
    if not groups:
        return Sentence(f"No run has {metric_title(metric)}: no curve against images seen.")
    sizes = sorted({d for d, _ in groups}, key=analysis.data_sort_key) or [None]
    variants = analysis.variants_by_size([r for rs in groups.values() for r in rs])
    colors = _colors(variants)
    fig = make_subplots(
        rows=1,
        cols=len(sizes),
        shared_yaxes=True,
        subplot_titles=[f"{analysis.data_label(d)} training images" for d in sizes],
    )
    shown = set()
    for col, d in enumerate(sizes, start=1):
        for v in variants:
            best: dict[int, dict[str, Any]] = {}
            for r in groups.get((d, v), []):
                i = r["images_seen"]
                if i not in best or metrics.error_of(r, metric) < metrics.error_of(best[i], metric):
                    best[i] = r
            if not best:
                continue
            rs = [best[i] for i in sorted(best)]
            fig.add_trace(
                go.Scatter(
                    x=[r["images_seen"] for r in rs],
                    y=[metrics.error_of(r, metric) for r in rs],
                    mode="lines+markers",
                    name=v,
                    legendgroup=v,
                    showlegend=v not in shown,
                    line=dict(color=colors[v]),
                    customdata=_hover_data(rs),
                    hovertemplate=_HOVER,
                ),
                row=1,
                col=col,
            )
            shown.add(v)
    fig.update_xaxes(type="log", title_text="images seen")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text=metric_title(metric), row=1, col=1)
    fig.update_layout(title=f"{metric_title(metric)} against images seen, per model size", height=420)
    return fig


def _add_extrapolation_points(fig: go.Figure, ex: dict[str, Any]) -> None:
    """The extrapolation check's fitted runs, its held-out runs and the cut between them."""
    fig.add_trace(
        go.Scatter(
            x=ex["train_x"],
            y=ex["train_e"],
            mode="markers",
            name=f"fitted ({ex['n_train']} runs)",
            marker=dict(color="black", size=9),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=ex["test_x"],
            y=ex["test_e"],
            mode="markers",
            name=f"held out ({ex['n_test']} runs)",
            marker=dict(color="white", size=11, symbol="diamond", line=dict(color="black", width=2)),
        )
    )
    all_e = ex["train_e"] + ex["test_e"]
    fig.add_trace(
        go.Scatter(
            x=[ex["cut"]] * 2,
            y=[min(all_e), max(all_e)],
            mode="lines",
            hoverinfo="skip",
            name=f"cut {ex['cut']:.3g}",
            line=dict(color="grey", dash="dot"),
        )
    )


def _add_extrapolation_fits(fig: go.Figure, ex: dict[str, Any]) -> None:
    """Each estimator's curve fitted below the cut (power law, then M4, where fitted), with its held-out errors."""
    grid = np.geomspace(min(ex["train_x"]), max(ex["test_x"]), 200)
    for name, label, style in (
        ("power_law", "power law", dict(color="black")),
        ("m4", "M4", dict(color="firebrick", dash="dash")),
    ):
        r = ex["results"].get(name)
        if r is None or analysis.failed(r) or "fit" not in r:
            continue
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=r["fit"].predict(grid),
                mode="lines",
                line=style,
                name=f"{label}: held-out RMSE log {r['rmse_log']:.3f}, mean |rel. error| {100 * r['mare']:.1f}%",
            )
        )


def scaling_extrapolation(result: dict[str, Any] | analysis.Failed) -> go.Figure | Sentence:
    """The extrapolation check: frontier runs below the cut (fitted) and at or above it (held out),
    both estimators' curves fitted below the cut, and their errors on the held-out runs. Traces:
    fit region, held out, cut line, power law, M4 (each if present)."""
    if analysis.failed(result):
        return Sentence(f"No extrapolation check for {metric_title(result.metric)}: {result.reason}")
    metric, x, ex = result["metric"], result["x"], result["extrapolation"]
    if analysis.failed(ex):
        return Sentence(f"No extrapolation check for {metric_title(metric)}: {ex.reason}")
    fig = go.Figure()
    _add_extrapolation_points(fig, ex)
    _add_extrapolation_fits(fig, ex)
    fig.update_xaxes(type="log", title_text=_x_title(x))
    fig.update_yaxes(type="log", title_text=metric_title(metric))
    fig.update_layout(
        title=f"extrapolation, {metric_title(metric)}: fit below {ex['cut']:.3g}, predict above", height=440
    )
    return fig


def scaling_report_figures(rows: Sequence[dict[str, Any]], results: dict[str, Any]) -> list[go.Figure | Sentence]:
    """Per metric: error against compute with the fits, the extrapolation check, best error
    against model size, and error against images seen."""
    figs = []
    for metric in ordered(results):
        result = results[metric]
        figs += [
            scaling_error_vs_compute(rows, result, metric),
            scaling_extrapolation(result),
            scaling_best_vs_size(rows, metric),
            scaling_error_vs_images(rows, metric),
        ]
    return figs
