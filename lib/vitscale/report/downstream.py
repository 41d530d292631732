"""The transfer section (notebooks/transfer.ipynb): few-shot against shots, the fine-tuning results
and curves, VTAB-1k per task and the paper's table, all read from the transfer run's summary.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from vitscale import formats, metrics
from vitscale.report import page
from vitscale.report.page import NO_FEWSHOT, NO_FINETUNING, Sentence
from vitscale.report.pretraining import series

_DASHES = ("solid", "dash", "dot", "dashdot")


_GRID_DASHES = ("dot", "dash", "dashdot", "longdash")


_pct = formats.percent_spread


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


def fewshot_table(summary: dict[str, Any]) -> page.Html | Sentence:
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
    return page.table(rows, title=title)


def finetune_table(summary: dict[str, Any]) -> page.Html | Sentence:
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
    return page.table(
        rows,
        title=f"fine-tuning at {r0['resolution']} px, {r0['steps']} steps of batch {r0['batch_size']}; "
        f"lr picked on {r0['holdout_images']} held-out images, test: {how}",
    )


def paper_table(summary: dict[str, Any]) -> page.Html | Sentence:
    """The paper's evaluation table, one row per model: ImageNet fine-tune and 10-shot, ReaL, v2,
    ObjectNet, VTAB-1k mean and groups (top-1 %); "not prepared" / "not run" where there is no number."""
    rows = [
        {"model": model, **{c: _pct(v) if isinstance(v, float) else v for c, v in row.items()}}
        for model, row in summary.get("paper_table", {}).items()
    ]
    if not rows:
        return Sentence("No evaluation table: this run predates it.")
    return page.table(rows, title="the paper's table: top-1 accuracy (%)")


def vtab_table(summary: dict[str, Any]) -> page.Html | Sentence:
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
    return page.table(rows, title="VTAB-1k: fine-tuned on train800, picked on val200, retrained on train800val200")


def finetune_curves(curves: Sequence[dict[str, Any]]) -> go.Figure | Sentence:
    """Fine-tuning curves, one row per dataset: train loss, held-out accuracy of the lr grid runs,
    test accuracy of the final runs; one colour per model, one dash per lr of the grid, the final
    (retrained) runs solid and thick. `curves` is transfer.program.load_curves(out_dir)."""
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
            xs, ys = series(c["records"], key)
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
