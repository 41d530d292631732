"""The "Allocation" section of the scaling report: error contours over (N, D) with IsoFLOP lines and
the N*(C) line, the IsoFLOP profiles with their minima, the exponent and constants tables, the
planner's recommendation and where the data support it. `write` makes it a report of its own for a
CSV of runs (report.html and summary.json); the scaling notebook shows the same figures for a sweep.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly
import plotly.graph_objects as go

from vitscale import files, runs
from vitscale.report import page as report  # (the HTML helpers; named as before the move, for merges)
from vitscale.scaling import allocation, table


def _iv(iv: Sequence[float] | None) -> str:
    return f"[{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def exponent_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per approach: the allocation exponent a (N* ~ C^a) with its interval and what it rests on."""
    j, iso, env = summary["joint"], summary["isoflop"], summary["envelope"]
    iso_on = f"{len(iso['budgets'])} profiles with an interior minimum, {len(iso['edges'])} at an edge (not used)"
    env_on = f"{len(env['budgets'])} budgets"
    rows = [
        ("3: joint law E + A/N^alpha + B/D^beta", j["a"], j["intervals"].get("a"), f"{j['n_points']} points", None),
        ("2: IsoFLOP profiles", iso["a"], iso["interval"], iso_on, iso.get("note")),
        ("1: envelope (best size per budget)", env["a"], env["interval"], env_on, env.get("note")),
    ]
    return [
        {
            "approach": name,
            "a": "" if a is None else f"{a:.3f}",
            "interval": _iv(iv),
            "rests on": on + (f"; {n}" if n else ""),
        }
        for name, a, iv, on, n in rows
    ]


def constant_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    j = summary["joint"]
    return [{"constant": n, "value": f"{j[n]:.4g}", "interval": _iv(j["intervals"].get(n))} for n in allocation.NAMES]


def _coverage(p: dict[str, Any]) -> str:
    """The prediction interval's nominal level and the coverage its backtests measured."""
    level, cov = p.get("error_interval_level"), p.get("error_interval_coverage")
    if level is None:
        return ""
    measured = "not measured (too few runs)" if cov is None else f"{cov:.0%} in backtests"
    return f" ({level:.0%} nominal; {measured})"


def plan_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The planner's recommendation at each budget."""
    return [
        {
            "budget (FLOPs)": f"{p['C']:.3g}",
            "N*": f"{p['N']:.3g} {_iv(p.get('N_interval'))}",
            "D*": f"{p['D']:.3g} {_iv(p.get('D_interval'))}",
            "D*/N*": f"{p['D_per_N']:.3g} {_iv(p.get('D_per_N_interval'))}",
            "predicted error [prediction interval]": f"{p['error']:.4g} {_iv(p.get('error_interval'))}" + _coverage(p),
            "parameter interval": _iv(p.get("error_parameter_interval")),
            "data": ("extrapolates" if p["extrapolates"] else "within the data")
            + ("" if p.get("determined", True) else "; the N/D split is not determined (see the notes)"),
        }
        for p in summary["plans"]
    ]


def contours(res: dict[str, Any]) -> go.Figure:
    """Predicted error over (N, D), the points, IsoFLOP lines at the planned budgets and the N*(C) line."""
    fit, pts, s = res["fit"], res["points"], res["summary"]
    nmax = max(fit.n_range[1], *(p["N"] for p in s["plans"])) * 2
    dmax = max(fit.d_range[1], *(p["D"] for p in s["plans"])) * 2
    ln = np.linspace(np.log10(fit.n_range[0] / 2), np.log10(nmax), 80)
    ld = np.linspace(np.log10(fit.d_range[0] / 2), np.log10(dmax), 80)
    z = np.log10(fit.predict(10 ** ln[None, :], 10 ** ld[:, None]))
    fig = go.Figure(go.Contour(x=10**ln, y=10**ld, z=z, colorscale="Viridis", colorbar={"title": "log10 error"},
                    contours={"coloring": "heatmap"}, name="joint law"))  # fmt: skip
    marker = {"color": np.log10(pts.error), "colorscale": "Viridis", "line": {"width": 1, "color": "white"}}
    fig.add_scatter(x=pts.N, y=pts.D, mode="markers", name="runs", text=pts.run, marker=marker)
    cs = np.logspace(np.log10(fit.k * 10 ** ln[0] * 10 ** ld[0]), np.log10(fit.k * nmax * dmax), 50)
    n_opt, d_opt = fit.optimum(cs)
    ok = (n_opt <= nmax) & (d_opt <= dmax)
    fig.add_scatter(x=n_opt[ok], y=d_opt[ok], mode="lines", name="N*(C), D*(C)", line={"color": "red", "width": 3})
    for p in s["plans"]:
        fig.add_scatter(x=10**ln, y=p["C"] / (fit.k * 10**ln), mode="lines", line={"dash": "dot", "color": "white"},
                        name=f"IsoFLOP {p['C']:.2g}")  # fmt: skip
        fig.add_scatter(x=[p["N"]], y=[p["D"]], mode="markers", marker={"symbol": "star", "size": 14, "color": "red"},
                        name=f"plan at {p['C']:.2g}")  # fmt: skip
    fig.update_xaxes(type="log", title="parameters N", range=[ln[0], ln[-1]])
    fig.update_yaxes(type="log", title=f"{pts.data_name.replace('_', ' ')} D", range=[ld[0], ld[-1]])
    return fig.update_layout(
        title=f"Error over (N, D): joint law, IsoFLOP lines (C = {fit.k:.3g} N D), optimum", height=520
    )


def profiles(summary: dict[str, Any]) -> go.Figure:
    """Each IsoFLOP profile: error against N at one budget, its parabola and minimum (or why it is an edge)."""
    fig = go.Figure()
    for p in summary["isoflop"]["profiles"]:
        if len(p["N"]) == 0:
            continue
        label = f"C {p['C']:.2g}" + (" (edge)" if p["edge"] else "")
        tr = fig.add_scatter(x=p["N"], y=p["error"], mode="markers", name=label, legendgroup=label)
        if p.get("coef"):
            x = np.linspace(*np.log(p["fitted"]), 40)
            fig.add_scatter(x=np.exp(x), y=np.polyval(p["coef"], x), mode="lines", legendgroup=label, showlegend=False,
                            line={"dash": "dot" if p["edge"] else "solid"})  # fmt: skip
        if p["N_opt"] is not None:
            fig.add_scatter(x=[p["N_opt"]], y=[p["error_opt"]], mode="markers", legendgroup=label, showlegend=False,
                            marker={"symbol": "x", "size": 12, "color": "black"})  # fmt: skip
        del tr
    fig.update_xaxes(type="log", title="parameters N")
    fig.update_yaxes(type="log", title="error at the budget (interpolated along each size's curve)")
    return fig.update_layout(
        title="IsoFLOP profiles: x marks a minimum; dotted: minimum at an edge, not used", height=480
    )


def section(res: Any) -> report.Html:
    """The Allocation section: sentences, the exponent, constant and plan tables, the figures; or the
    one sentence saying why there is none (`res` is allocate's result or an analysis.Failed)."""
    if not isinstance(res, dict):
        return report.paragraph(f"No allocation analysis: {res.reason}.")
    s = res["summary"]
    return report.section(
        report.Html("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in s["notes"]) + "</ul>"),
        report.paragraph(f"Exponents: {s['agreement']}."),
        report.table(plan_rows(s), title="Plan: the compute-optimal next run at each budget"),
        report.table(exponent_rows(s), title="Allocation exponent a (N* ~ C^a), three approaches"),
        report.table(constant_rows(s), title="Joint law E(N, D) = E + A / N^alpha + B / D^beta"),
        report.paragraph(s["support"]),
        contours(res),
        profiles(s),
    )


def show(res: Any) -> None:
    """The Allocation section in a notebook (plotly.js is on the page already)."""
    section(res).show()


def write(points: table.Points, out_dir: str | Path, *, source: str = "", budgets: Any = None, **kw: Any) -> Path:
    """Fit and plan on `points`; write out_dir/summary.json ({"source", "allocation"}) and
    out_dir/report.html. Returns the report's path."""
    out_dir = Path(out_dir)
    res = allocation.allocate(points, budgets=budgets, **kw)
    runs.write_json(out_dir / "summary.json", {"source": str(source), "allocation": res["summary"]})
    title = html.escape(str(source))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Allocation: {title}</title>"
        f"<script>{plotly.offline.get_plotlyjs()}</script></head>"
        f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'><h1>Allocation report: {title}</h1>"
        "<p>How big a model, trained on how much data, for a compute budget (Hoffmann et al. 2022, three "
        "approaches; the joint law fitted as Besiroglu et al. 2024 do).</p>"
        f"{section(res)._repr_html_()}</body></html>"
    )
    files.atomic_write_text(out_dir / "report.html", page)
    return out_dir / "report.html"
