"""Plotly figures the notebooks show, drawn so that the executed notebook's HTML opens offline.

`setup_notebook()` sets the renderer to "plotly_mimetype+notebook": JupyterLab draws the plotly
mimetype, and the text/html part (with plotly.js embedded once by that call's output) is what
nbconvert's HTML export keeps. The cell that calls it must keep its output.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

RENDERER = "plotly_mimetype+notebook"


def setup_notebook() -> None:
    """Use a renderer whose output survives into HTML and embeds plotly.js (offline)."""
    pio.renderers.default = RENDERER
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
        for col, key in enumerate(("train/loss", "test/loss", "test/acc"), start=1):
            xs, ys = _series(records, key, x)
            fig.add_trace(go.Scatter(x=xs, y=ys, name=name, legendgroup=name, showlegend=col == 1,
                                     mode="lines+markers" if key.startswith("test") else "lines",
                                     line=dict(color=color)), row=1, col=col)
    fig.update_xaxes(title_text=x.replace("_", " "))
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(height=380, margin=dict(t=40, b=40))
    return fig


def fewshot_curves(records: Sequence[dict[str, Any]], x: str = "step") -> go.Figure:
    """Few-shot accuracy during pretraining, one line per dataset and shot count."""
    keys = sorted({k for r in records for k in r if k.startswith("fewshot/") and not k.endswith("_std")})
    fig = go.Figure()
    if not keys:
        fig.add_annotation(text="no few-shot evaluation in this run (parameter fewshot_datasets)", showarrow=False)
    for k in keys:
        xs, ys = _series(records, k, x)
        fig.add_trace(go.Scatter(x=xs, y=ys, name=k.removeprefix("fewshot/"), mode="lines+markers"))
    fig.update_layout(title="few-shot linear transfer during pretraining", xaxis_title=x.replace("_", " "),
                      yaxis_title="top-1 accuracy", height=380)
    return fig


def fewshot_by_shots(results: dict[str, dict[str, dict[str, Any]]]) -> go.Figure:
    """Accuracy against shots per downstream dataset, with the spread over seeds as error bars."""
    fig = go.Figure()
    for name, res in results.items():
        shots = sorted(res, key=lambda s: int(s.removesuffix("shot")))
        fig.add_trace(go.Scatter(x=[int(s.removesuffix("shot")) for s in shots], y=[res[s]["mean"] for s in shots],
                                 error_y=dict(type="data", array=[res[s]["std"] for s in shots]),
                                 name=name, mode="lines+markers"))
    fig.update_layout(title="few-shot linear transfer", xaxis_title="images per class (shots)",
                      yaxis_title="top-1 accuracy", xaxis_type="log", height=380)
    return fig


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> go.Figure:
    """A plain table figure (renders in the HTML report like the plots)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    cells = defaultdict(list)
    for r in rows:
        for c in columns:
            cells[c].append(fmt(r.get(c)))
    fig = go.Figure(go.Table(header=dict(values=columns, align="left"),
                             cells=dict(values=[cells[c] for c in columns], align="left")))
    fig.update_layout(title=title or None, height=min(120 + 28 * len(rows), 900), margin=dict(t=40 if title else 10,
                                                                                             b=10))
    return fig


def summary_table(summary: dict[str, Any]) -> go.Figure:
    """The run's headline numbers as a two-column table."""
    keys = ["name", "variant", "dataset", "train_examples", "total_steps", "batch_size", "images_seen", "num_params",
            "train_flops", "best_test_acc", "wall_seconds_this_session"]
    rows = [{"quantity": k, "value": summary.get(k)} for k in keys]
    rows += [{"quantity": k, "value": v} for k, v in sorted(summary.get("final", {}).items())]
    return table(rows, ["quantity", "value"])
