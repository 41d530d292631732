"""The "Learning rates" section of the scaling report: the rate law (best rate against parameters) and
whether it is flat, validation error against each searched value per point (the U-curves), and what
won per point, flagged where the winner sits at an edge of the searched range."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from vitscale.report import page

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def law_text(searched: Mapping[str, Any], parametrization: str | None = None) -> str:
    """One sentence: the law with its exponent's interval and the verdict on flatness, or why there is none."""
    law = searched.get("rate_law")
    assumed = f" under the {parametrization} parametrization" if parametrization else ""
    if law is None:
        return "No learning-rate search in this sweep (`search:` in the sweep file)."
    if isinstance(law, str):
        return f"Learning-rate law{assumed}: not fitted: {law}."
    lo, hi = law.b_interval
    verdict = {
        "yes": "flat: yes (the exponent's 95% interval lies within +-0.25 of 0)",
        "no": "flat: no (the exponent's 95% interval excludes 0)",
        "cannot tell": "flat: cannot tell (the exponent's interval holds 0 but is too wide to say)",
    }[law.flat]
    return (
        f"Learning-rate law{assumed}: best lr = {law.a:.4g} x N^{law.b:.4g} (exponent 95% interval "
        f"[{lo:.4g}, {hi:.4g}], {law.n} points); {verdict}."
    )


def u_curves(searched: Mapping[str, Any], key: str = "lr") -> go.Figure | None:
    """Validation error against the searched value, one line per point (main runs), coloured by model."""
    choices = [c for c in searched.get("choices", []) if c.branch is None and key in c.tried]
    if not choices:
        return None
    sizes = {c.label["variant"]: c.label["num_params"] or 0 for c in choices}
    color = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(sorted(sizes, key=sizes.get))}
    fig = go.Figure()
    for c in choices:
        xs = [v for v, e in c.tried[key] if np.isfinite(e)]
        ys = [e for v, e in c.tried[key] if np.isfinite(e)]
        name = f"{c.label['variant']}, {c.label['train_examples'] or 'all'} images, {c.label['total_steps']} steps"
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line={"color": color[c.label["variant"]]})
        )
    fig.update_xaxes(type="log" if key == "lr" else "linear", title_text=key)
    fig.update_yaxes(title_text="validation error")
    fig.update_layout(title=f"Validation error against {key} per point (the best is the minimum)", height=420)
    return fig


def choice_rows(searched: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per point and branch: the model, data and length, each key's winner and edge flag."""
    rows = []
    for c in searched.get("choices", []):
        row = {k: c.label.get(k) for k in ("variant", "num_params", "train_examples", "total_steps")}
        row["branch"] = c.branch or ""
        for k in searched["keys"]:
            row[f"best {k}"] = "all diverged" if c.best[k] is None else c.best[k]
            row[f"{k} at edge"] = c.at_edge[k] or ""
            row[f"{k} tried"] = len(c.tried[k])
        rows.append(row)
    return rows


def section(searched: Mapping[str, Any], parametrization: str | None = None) -> page.Html:
    """The whole section (empty sentence when the sweep has no search)."""
    parts: list[Any] = [page.paragraph(law_text(searched, parametrization))]
    if searched.get("choices"):
        edges = sum(any(c.at_edge.values()) for c in searched["choices"])
        if edges:
            parts.append(
                page.paragraph(
                    f"{edges} point(s) have their best value at an edge of the searched range: "
                    "`vitscale sweep <file> --extend-search` adds the next value beyond it."
                )
            )
        fig = u_curves(searched)
        parts += [fig] if fig is not None else []
        parts.append(page.details("What won per point", page.table(choice_rows(searched))))
    return page.section(*parts)


def parametrization_of(rows: list[Mapping[str, Any]]) -> str | None:
    """The parametrization the sweep's runs share, if they share one."""
    found = {r.get("parametrization") for r in rows if r.get("parametrization")}
    return found.pop() if len(found) == 1 else None
