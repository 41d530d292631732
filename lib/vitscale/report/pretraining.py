"""The pretraining section (notebooks/pretrain.ipynb): training curves, few-shot accuracy during
pretraining, the run's headline numbers. Tables are `page.table` HTML (every number in full)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from vitscale import analysis, formats, metrics
from vitscale.report import page
from vitscale.report.page import NO_FEWSHOT, Sentence


def series(records: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list, list]:
    """(xs, ys) of a metric over logged records, where both are numbers."""
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
            xs, ys = series(records, key, x)
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
        xs, ys = series(records, k, x)
        fig.add_trace(go.Scatter(x=xs, y=ys, name=metrics.fewshot_label(k), mode="lines+markers"))
    fig.update_layout(
        title="few-shot linear transfer during pretraining",
        xaxis_title=x.replace("_", " "),
        yaxis_title="top-1 accuracy",
        height=380,
    )
    return fig


# How the run summary's quantities read (the others: formats.auto).
_SUMMARY_FORMATS = {
    "num_params": lambda v: f"{formats.count(v)} ({formats.integer(v)})",
    "train_flops": formats.flops,
    "images_seen": formats.integer,
    "train_examples": analysis.data_label,
}


def summary_table(summary: dict[str, Any]) -> page.Html:
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
    rows = [{"quantity": k, "value": _SUMMARY_FORMATS.get(k, formats.auto)(summary.get(k))} for k in keys]
    rows += [{"quantity": f"best {k}", "value": v} for k, v in summary.get("best", {}).items()]
    rows += [{"quantity": k, "value": v} for k, v in sorted(summary.get("final", {}).items())]
    return page.table(rows, ["quantity", "value"])
