"""Plotly figures and HTML tables the notebooks show, drawn so that the executed notebook's HTML
opens offline.

`setup_notebook()` sets the renderer to "plotly_mimetype+vitscale_notebook": JupyterLab draws the
plotly mimetype, and the text/html part (with plotly.js embedded once by that call's output, and no
MathJax from a CDN) is what nbconvert's HTML export keeps. The cell that calls it must keep its output.
Tables are `report.table` HTML (every number in full, formatted by `report`'s helpers).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import NotebookRenderer
from plotly.subplots import make_subplots

from vitscale import analysis, metrics, report

RENDERER = "plotly_mimetype+vitscale_notebook"


class OfflineNotebookRenderer(NotebookRenderer):
    """plotly's notebook renderer without its MathJax <script src> from a CDN in every figure; plotly.js
    is embedded by `setup_notebook` (`embed`), once, not on the first `show` (figures inside HTML
    sections never call it)."""

    def activate(self):
        pass

    def embed(self):
        super().activate()

    def to_mimebundle(self, fig_dict):
        return {
            "text/html": pio.to_html(
                fig_dict,
                config=self.config,
                include_plotlyjs=self.include_plotlyjs,
                include_mathjax=False,
                full_html=False,
                default_width="100%",
                default_height=525,
                validate=False,
            )
        }


pio.renderers["vitscale_notebook"] = OfflineNotebookRenderer()


class Sentence:
    """What a report shows instead of a figure with nothing in it: one sentence (as Markdown)."""

    def __init__(self, text: str):
        self.text = text

    def show(self) -> None:
        report.paragraph(self.text).show()

    def __repr__(self) -> str:
        return f"Sentence({self.text!r})"


NO_FEWSHOT = Sentence("No few-shot evaluation in this run (parameter `fewshot_datasets`).")
NO_FINETUNING = Sentence("No fine-tuning in this run (parameter `finetune_datasets`).")


def setup_notebook() -> None:
    """Use a renderer whose output survives into HTML and embeds plotly.js (offline)."""
    pio.renderers.default = RENDERER
    pio.renderers["vitscale_notebook"].embed()
    pio.templates.default = "plotly_white"


def _series(records: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list, list]:
    pts = [(r[x], r[key]) for r in records if key in r and x in r and isinstance(r[key], (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(curves: dict[str, Sequence[dict[str, Any]]], x: str = "step") -> go.Figure:
    """Train loss, test loss and test accuracy against `x` ("step" or "images_seen"), one colour
    per curve (a run and its cooldown branches)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("train loss", "test loss", "test top-1 accuracy"))
    palette = pio.templates["plotly"].layout.colorway
    for i, (name, records) in enumerate(curves.items()):
        color = palette[i % len(palette)]
        for col, key in enumerate((metrics.TRAIN_LOSS, metrics.TEST_LOSS, metrics.TEST_ACC), start=1):
            xs, ys = _series(records, key, x)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    mode="lines+markers" if key.startswith("test") else "lines",
                    line=dict(color=color),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text=x.replace("_", " "))
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(height=380, margin=dict(t=40, b=40))
    return fig


def fewshot_curves(records: Sequence[dict[str, Any]], x: str = "step") -> go.Figure | Sentence:
    """Few-shot accuracy during pretraining, one line per dataset and shot count."""
    keys = sorted({k for r in records for k in r if metrics.is_fewshot(k)})
    if not keys:
        return NO_FEWSHOT
    fig = go.Figure()
    for k in keys:
        xs, ys = _series(records, k, x)
        fig.add_trace(go.Scatter(x=xs, y=ys, name=metrics.fewshot_label(k), mode="lines+markers"))
    fig.update_layout(
        title="few-shot linear transfer during pretraining",
        xaxis_title=x.replace("_", " "),
        yaxis_title="top-1 accuracy",
        height=380,
    )
    return fig


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> report.Html:
    """A plain HTML table (`report.table`): every number in full, nothing clipped."""
    return report.table(rows, columns, title=title)


# How the run summary's quantities read (the others: report.auto).
_SUMMARY_FORMATS = {
    "num_params": lambda v: f"{report.count(v)} ({report.integer(v)})",
    "train_flops": report.flops,
    "images_seen": report.integer,
    "train_examples": lambda v: analysis.data_label(v),
}


def summary_table(summary: dict[str, Any]) -> report.Html:
    """The run's headline numbers as a two-column table."""
    keys = [
        "name",
        "variant",
        "dataset",
        "train_examples",
        "total_steps",
        "batch_size",
        "images_seen",
        "num_params",
        "train_flops",
        "wall_seconds_this_session",
    ]
    rows = [{"quantity": k, "value": _SUMMARY_FORMATS.get(k, report.auto)(summary.get(k))} for k in keys]
    rows += [{"quantity": f"best {k}", "value": v} for k, v in summary.get("best", {}).items()]
    rows += [{"quantity": k, "value": v} for k, v in sorted(summary.get("final", {}).items())]
    return table(rows, ["quantity", "value"])


# How a report groups a run's parameters; a field in none of them is listed under "other".
PRETRAIN_GROUPS = {
    "model": (
        "variant width depth mlp_dim num_heads pool_type posemb dropout head_bias_init representation_size gelu "
        "dtype remat scan init_from model"
    ).split(),
    "data": (
        "dataset data_dir train_split test_split train_examples image_size channels crop_padding flip input "
        "pp_train pp_eval"
    ).split(),
    "recipe": (
        "loss optimizer lr weight_decay wd_rules grad_clip_norm b2 schedule warmup_steps timescale cooldown_steps "
        "cooldown_branches total_steps batch_size seed"
    ).split(),
    "evaluation": (
        "eval_every eval_batch_size log_every fewshot_datasets fewshot_shots fewshot_seeds fewshot_every"
    ).split(),
    "run": "name checkpoint_every keep_checkpoints keep_every mesh grad_chains coordinator_address num_processes "
    "process_id".split(),
}
TRANSFER_GROUPS = {
    "model": "pretrained random_model pretrained_model compare_random".split(),
    "data": (
        "data_dir input fewshot_datasets finetune_datasets finetune_resolution pp_finetune pp_finetune_eval"
    ).split(),
    "recipe": (
        "finetune_steps finetune_batch_size lr_grid holdout_fraction retrain warmup_steps momentum grad_clip_norm seed"
    ).split(),
    "evaluation": "fewshot_shots fewshot_seeds fewshot_l2 eval_every eval_batch_size log_every".split(),
    "run": "name mesh".split(),
}


def parameters(cfg: Any, groups: dict[str, Sequence[str]] | None = None) -> report.Html:
    """Every resolved parameter of a run (defaults included), grouped (model, data, recipe,
    evaluation, ...) in a collapsed block: what ran, without opening params.yaml."""
    values = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    if groups is None:
        groups = TRANSFER_GROUPS if "pretrained" in values else PRETRAIN_GROUPS
    placed: set[str] = set()
    parts = []
    for group, keys in groups.items():
        rows = [{"parameter": k, "value": _param_text(values[k])} for k in keys if k in values]
        placed |= {k for k in keys if k in values}
        if rows:
            parts.append(report.table(rows, title=group))
    rest = [{"parameter": k, "value": _param_text(v)} for k, v in values.items() if k not in placed]
    if rest:
        parts.append(report.table(rest, title="other"))
    return report.details(f"All parameters ({len(values)}, defaults included)", *parts)


def _param_text(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return report.auto(v) if not isinstance(v, int) or isinstance(v, bool) else str(v)


# ----------------------------------------------------------------------------- transfer (notebooks/transfer.ipynb)
_DASHES = ("solid", "dash", "dot", "dashdot")
_GRID_DASHES = ("dot", "dash", "dashdot", "longdash")


_pct = report.percent_spread


def fewshot_comparison(fewshot: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> go.Figure | Sentence:
    """Few-shot accuracy against shots, one colour per dataset and one dash per model (pretrained,
    random), with the spread over seeds as error bars. `fewshot` is summary["fewshot"]."""
    if not any(fewshot.values()):
        return NO_FEWSHOT
    fig = go.Figure()
    palette = pio.templates["plotly"].layout.colorway
    datasets = list(dict.fromkeys(d for by_dataset in fewshot.values() for d in by_dataset))
    for j, (model, by_dataset) in enumerate(fewshot.items()):
        for name, res in by_dataset.items():
            shots = sorted(res, key=lambda s: int(s.removesuffix("shot")))
            fig.add_trace(
                go.Scatter(
                    x=[int(s.removesuffix("shot")) for s in shots],
                    y=[res[s]["mean"] for s in shots],
                    error_y=dict(type="data", array=[res[s]["std"] for s in shots]),
                    name=f"{name} ({model})",
                    mode="lines+markers",
                    line=dict(color=palette[datasets.index(name) % len(palette)], dash=_DASHES[j % len(_DASHES)]),
                )
            )
    shots = sorted({int(s.removesuffix("shot")) for d in fewshot.values() for r in d.values() for s in r})
    fig.update_layout(
        title="few-shot linear transfer (frozen features, closed-form ridge)",
        xaxis_title="images per class (shots)",
        yaxis_title="top-1 accuracy",
        xaxis_type="log",
        xaxis_tickvals=shots or None,
        height=420,
    )
    return fig


def fewshot_table(summary: dict[str, Any]) -> report.Html | Sentence:
    """Few-shot accuracy (%, mean ± spread over seeds) per dataset and shot count, one column per
    model, and the pretrained model's gain over the random init when both ran."""
    few, models = summary.get("fewshot", {}), summary.get("models", [])
    if not any(few.values()):
        return NO_FEWSHOT
    rows = []
    first = few.get(models[0], {}) if models else {}
    for name, res in first.items():
        for shot in sorted(res, key=lambda s: int(s.removesuffix("shot"))):
            row = {"dataset": name, "shots": int(shot.removesuffix("shot"))}
            for m in models:
                r = few.get(m, {}).get(name, {}).get(shot)
                row[f"{m} (%)"] = _pct(r["mean"], r["std"]) if r else ""
            if len(models) > 1 and "random" in few:
                row["gain (points)"] = f"{100 * (res[shot]['mean'] - few['random'][name][shot]['mean']):+.1f}"
            rows.append(row)
    seeds = len(next(iter(next(iter(first.values())).values()))["per_seed"]) if first else 0
    title = f"few-shot top-1 accuracy (%), mean ± std over {seeds} seeds"
    if w := summary.get("weights"):  # where the pretrained weights came from
        title += f"; weights: {w.get('file')} ({w.get('layout')}, variant {w.get('variant')})"
    return table(rows, title=title)


def finetune_table(summary: dict[str, Any]) -> report.Html | Sentence:
    """Fine-tuning per dataset and model: held-out accuracy for each lr of the grid, the lr picked,
    and the test accuracy of the final run."""
    rows = []
    for name, by_model in summary.get("finetune", {}).items():
        for model, r in by_model.items():
            row = {"dataset": name, "model": model}
            for g in r["grid"]:
                row[f"held-out acc, lr {g['lr']:g} (%)"] = "diverged" if g["diverged"] else _pct(g[metrics.VAL_ACC])
            row["best lr"] = f"{r['best_lr']:g}" + (" (grid edge)" if r.get("best_lr_at_grid_edge") else "")
            row["test acc (%)"] = _pct(r[metrics.TEST_ACC])
            rows.append(row)
    if not rows:
        return NO_FINETUNING
    r0 = next(iter(next(iter(summary["finetune"].values())).values()))
    how = "retrained on the whole training split" if r0["retrained"] else "best grid run"
    return table(
        rows,
        title=f"fine-tuning at {r0['resolution']} px, {r0['steps']} steps of batch {r0['batch_size']}; "
        f"lr picked on {r0['holdout_images']} held-out images, test: {how}",
    )


def paper_table(summary: dict[str, Any]) -> report.Html | Sentence:
    """The paper's evaluation table, one row per model: ImageNet fine-tune and 10-shot, ReaL, v2,
    ObjectNet, VTAB-1k mean and groups (top-1 %); "not prepared" / "not run" where there is no number."""
    rows = [
        {"model": model, **{c: _pct(v) if isinstance(v, float) else v for c, v in row.items()}}
        for model, row in summary.get("paper_table", {}).items()
    ]
    if not rows:
        return Sentence("No evaluation table: this run predates it.")
    return table(rows, title="the paper's table: top-1 accuracy (%)")


def vtab_table(summary: dict[str, Any]) -> report.Html | Sentence:
    """VTAB-1k per task and model: the (steps, lr) picked on val200 and the test accuracy (mean ± spread
    over seeds); stand-in tasks are marked as not VTAB."""
    rows = []
    for model, result in summary.get("vtab", {}).items():
        for task, r in result["tasks"].items():
            picks = ", ".join(f"{s['best_steps']}/{s['best_lr']:g}" for s in r["seeds"])
            group = "stand-in (not VTAB)" if r["standin"] else r["group"]
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "group": group,
                    "seeds": len(r["seeds"]),
                    "picked steps/lr": picks,
                    "test acc (%)": _pct(
                        r[metrics.TEST_ACC], r[metrics.spread(metrics.TEST_ACC)] if len(r["seeds"]) > 1 else None
                    ),
                }
            )
    if not rows:
        return Sentence("No VTAB-1k tasks in this run (vtab_tasks).")
    return table(rows, title="VTAB-1k: fine-tuned on train800, picked on val200, retrained on train800val200")


def finetune_curves(curves: Sequence[dict[str, Any]]) -> go.Figure | Sentence:
    """Fine-tuning curves, one row per dataset: train loss, held-out accuracy of the lr grid runs,
    test accuracy of the final runs; one colour per model, one dash per lr of the grid, the final
    (retrained) runs solid and thick. `curves` is transfer.load_curves(out_dir)."""
    if not curves:
        return NO_FINETUNING
    datasets = list(dict.fromkeys(c["dataset"] for c in curves))
    fig = make_subplots(
        rows=len(datasets),
        cols=3,
        vertical_spacing=0.12 / max(len(datasets), 1),
        subplot_titles=[
            f"{d}: {t}"
            for d in datasets
            for t in ("train loss", "held-out accuracy (lr grid)", "test accuracy (final)")
        ],
    )
    palette = pio.templates["plotly"].layout.colorway
    models = list(dict.fromkeys(c["model"] for c in curves))
    lrs = sorted({c["lr"] for c in curves})
    shown = set()
    for c in curves:
        label = f"{c['model']} {'final ' if c['final'] else ''}lr={c['lr']:g}"
        color = palette[models.index(c["model"]) % len(palette)]
        dash = "solid" if c["final"] else _GRID_DASHES[lrs.index(c["lr"]) % len(_GRID_DASHES)]
        row = datasets.index(c["dataset"]) + 1
        for col, key in enumerate((metrics.TRAIN_LOSS, metrics.VAL_ACC, metrics.TEST_ACC), start=1):
            xs, ys = _series(c["records"], key)
            if not xs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=label,
                    legendgroup=label,
                    showlegend=label not in shown,
                    mode="lines" if key == metrics.TRAIN_LOSS else "lines+markers",
                    line=dict(color=color, dash=dash, width=3 if c["final"] else 1.5),
                ),
                row=row,
                col=col,
            )
            shown.add(label)
        fig.update_yaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text="step", row=len(datasets))
    fig.update_layout(height=340 * len(datasets) + 60, margin=dict(t=50, b=40))
    return fig


# ----------------------------------------------------------------------------- scaling (scaling_analysis.ipynb)
# Rows are `runs.collect` rows, results come from `analysis.analyze` / `analyze_all`.


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


def _metric_title(metric: str) -> str:
    return metrics.title(metric)


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
        return Sentence(f"No run has {_metric_title(metric)} and {_x_title(x)}: nothing to draw.")
    fig = go.Figure()
    marks = _add_run_traces(fig, have, metric, x)
    title = f"{_metric_title(metric)} against {_x_title(x)} (markers: training images, {marks})"
    if fail:
        title += f"<br>no fit: {result.reason}"
    else:
        _add_frontier_trace(fig, rows, result["frontier"], metric, x)
        _add_fit_traces(fig, result)
    fig.update_xaxes(type="log", title_text=_x_title(x))
    fig.update_yaxes(type="log", title_text=_metric_title(metric))
    fig.update_layout(title=title, height=520, legend=dict(font=dict(size=11)))
    return fig


def scaling_best_vs_size(rows: Sequence[dict[str, Any]], metric: str = metrics.TEST_ACC) -> go.Figure | Sentence:
    """Best error (over training lengths) against parameters, one line per data size (log-log)."""
    groups = analysis.by_group(rows, metric, "train_examples", "variant")
    if not groups:
        return Sentence(f"No run has {_metric_title(metric)}: no best error per model size.")
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
    fig.update_yaxes(type="log", title_text=f"best {_metric_title(metric)}")
    fig.update_layout(title=f"best {_metric_title(metric)} against model size, per data size", height=420)
    return fig


def scaling_error_vs_images(rows: Sequence[dict[str, Any]], metric: str = metrics.TEST_ACC) -> go.Figure | Sentence:
    """Error against images seen, one facet per data size and one line per model size (the best
    run or cooldown branch at each images-seen value); log-log."""
    groups = analysis.by_group(rows, metric, "train_examples", "variant")
    if not groups:
        return Sentence(f"No run has {_metric_title(metric)}: no curve against images seen.")
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
    fig.update_yaxes(title_text=_metric_title(metric), row=1, col=1)
    fig.update_layout(title=f"{_metric_title(metric)} against images seen, per model size", height=420)
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
        return Sentence(f"No extrapolation check for {_metric_title(result.metric)}: {result.reason}")
    metric, x, ex = result["metric"], result["x"], result["extrapolation"]
    if analysis.failed(ex):
        return Sentence(f"No extrapolation check for {_metric_title(metric)}: {ex.reason}")
    fig = go.Figure()
    _add_extrapolation_points(fig, ex)
    _add_extrapolation_fits(fig, ex)
    fig.update_xaxes(type="log", title_text=_x_title(x))
    fig.update_yaxes(type="log", title_text=_metric_title(metric))
    fig.update_layout(
        title=f"extrapolation, {_metric_title(metric)}: fit below {ex['cut']:.3g}, predict above", height=440
    )
    return fig


# How the scaling tables show their numbers.
_RUN_FORMATS = {
    "params": report.count,
    "train FLOPs": report.flops,
    "images seen": report.integer,
    "steps": report.integer,
}


def _ordered(results: dict[str, Any]) -> list[str]:
    """Metrics in report order: upstream (test) first, then few-shot by dataset and shots."""
    return sorted(results, key=metrics.sort_key)


def scaling_constants_table(results: dict[str, Any]) -> report.Html:
    """Fitted constants, one column per metric: power law a, b, c, d and M4 (with bootstrap
    intervals), the extrapolation errors, and why a metric could not be fitted."""
    per_metric = analysis.constants_rows({m: results[m] for m in _ordered(results)})
    if not per_metric:
        return report.paragraph("No metric to fit.")
    quantities = list(dict.fromkeys(k for r in per_metric for k in r if k != "metric"))
    rows = [{"quantity": q, **{r["metric"]: r.get(q, "") for r in per_metric}} for q in quantities]
    return report.table(
        rows,
        ["quantity"] + [r["metric"] for r in per_metric],
        title="frontier fits: E = a (x + d)^-b + c and M4 [95% bootstrap intervals]",
    )


def scaling_findings_table(found: dict[str, dict[str, Any]]) -> report.Html:
    """The paper's claims checked on this sweep, per metric (`analysis.findings`): holds, and the numbers."""
    rows = [{"metric": _metric_title(m), **r} for m in _ordered(found) for r in analysis.findings_rows(found[m])]
    return report.table(rows, ["metric", "finding", "holds", "verdict"], title="findings at this scale")


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def scaling_runs_table(rows: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> report.Html:
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
            **{_metric_title(m): _finite_or_none(metrics.error_of(r, m)) for m in names},
        }
        for r in rows
    ]
    if not out:
        return report.paragraph("No finished run in this sweep.")
    formats = _RUN_FORMATS | {_metric_title(m): report.percent for m in names}
    return report.table(
        out, title=f"{len(out)} trained models (runs and cooldown branches)", formats=formats, table_id="runs"
    )


def scaling_report_figures(rows: Sequence[dict[str, Any]], results: dict[str, Any]) -> list[go.Figure | Sentence]:
    """Per metric: error against compute with the fits, the extrapolation check, best error
    against model size, and error against images seen."""
    figs = []
    for metric in _ordered(results):
        result = results[metric]
        figs += [
            scaling_error_vs_compute(rows, result, metric),
            scaling_extrapolation(result),
            scaling_best_vs_size(rows, metric),
            scaling_error_vs_images(rows, metric),
        ]
    return figs


def _law_text(result: dict[str, Any]) -> str:
    pl = result["power_law"]
    iv = pl.intervals
    flags = {k: analysis._flags(pl.as_dict(), k) for k in "abcd"}
    const = [f"{k} = {report.with_interval(getattr(pl, k), iv.get(k), flags[k])}" for k in "abd"]
    floor = report.percent(pl.c, iv.get("c")) + "".join(f" ({f})" for f in flags["c"])
    const = ", ".join([*const[:2], f"c (error floor) = {floor}", const[2]])
    return f"E = a (x + d)^-b + c on {pl.n} frontier points: {const}"


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
        f"{report.flops(ex['cut']) if result['x'] == 'train_flops' else report.number(ex['cut'], 3)}, "
        f"predicts the {ex['n_test']} above within {report.percent(r['mare'])} on average (RMSE of log error "
        f"{report.number(best, 3)})"
    )
    if rest:
        second, name2, _ = rest[0]
        ratio = f"{second / best:.2f}x" if best > 0 else "infinitely"
        txt += f"; next: {analysis.law_label(name2)}, {ratio} the error"
    return txt + "."


def next_run_text(allocation: Any) -> str:
    """The headline's recommendation: the compute-optimal next run at the largest planned budget, or why
    the study cannot give one."""
    if analysis.failed(allocation):
        return f"Next run: none recommended ({allocation.reason})."
    s = allocation["summary"]
    p = s["plans"][-1]
    if not p["determined"]:
        return (
            f"Next run at {report.flops(p['C'])} FLOPs: not determined by this study (see Allocation: "
            "the model-size or data term is a step, not a power law)."
        )
    iv = p.get("error_interval")
    where = "extrapolating beyond the study" if p["extrapolates"] else "within the study's range"
    return (
        f"Next run at {report.flops(p['C'])} FLOPs: {report.count(p['N'])} parameters on {report.count(p['D'])} "
        f"images seen, predicted error {report.percent(p['error'], iv)} ({where}; details in Allocation)."
    )


def scaling_headline(results: dict[str, Any], found: dict[str, dict[str, Any]], allocation: Any = None) -> report.Html:
    """The answer first: per metric (upstream first) the fitted law with its intervals, which law
    extrapolates best and by how much, the findings that hold (and which cannot be tested), and the
    recommended next run when the allocation analysis ran."""
    blocks = []
    if allocation is not None:
        blocks.append(report.paragraph(next_run_text(allocation)))
    for metric in _ordered(results):
        result, title = results[metric], _metric_title(metric)
        if analysis.failed(result):
            blocks.append(
                report.section(
                    report.Html(f"<h3>{html.escape(title)}</h3>"), report.paragraph(f"Not fitted: {result.reason}")
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
        blocks.append(report.Html(f"<h3>{html.escape(title)}</h3><ul>{items}</ul>"))
    return report.section(*blocks, css="vs-headline")


def scaling_details(rows: Sequence[dict[str, Any]], results: dict[str, Any], found: dict[str, Any]) -> report.Html:
    """Per metric (upstream first), collapsed: its constants, its findings and its four figures."""
    parts = []
    for metric in _ordered(results):
        parts.append(
            report.details(
                f"Details: {_metric_title(metric)}",
                scaling_constants_table({metric: results[metric]}),
                scaling_findings_table({metric: found[metric]} if metric in found else {}),
                scaling_error_vs_compute(rows, results[metric], metric),
                scaling_extrapolation(results[metric]),
                scaling_best_vs_size(rows, metric),
                scaling_error_vs_images(rows, metric),
            )
        )
    return report.section(*parts)


def show_all(figures: Sequence[go.Figure | Sentence | report.Html]) -> None:
    """Show figures one after the other (keeps loops out of notebooks)."""
    for fig in figures:
        fig.show()
