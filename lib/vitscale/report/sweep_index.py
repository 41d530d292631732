"""outputs/<sweep>/index.html: the sweep's runs at a glance, written by the sweep after every run."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from vitscale import formats, metrics, runs
from vitscale.report import page


def index_html(out: Path, sweep: Any, index: dict[str, str]) -> str:
    """outputs/<sweep>/index.html: every run with its status, key metrics and compute, linked to its
    report, and a link to the scaling page. Plain HTML: it opens offline anywhere. `sweep`: a
    sweep.Sweep (its name, notebook and runs, each with run_id and params); `index`: {run_id: status}."""
    summaries = {
        r.run_id: runs.read_json(out / r.run_id / "summary.json") if (out / r.run_id / "summary.json").is_file() else {}
        for r in sweep.runs
    }
    finals = {k: s.get("final", {}) for k, s in summaries.items()}
    names = sorted({m for f in finals.values() for m in f if metrics.ANALYSABLE.fullmatch(m)}, key=metrics.sort_key)
    head = ["run", "status", "variant", "train images", "steps", *names, "train FLOPs", "device-seconds", "branches"]
    rows = []
    for r in sweep.runs:
        s, run_html = summaries[r.run_id], out / r.run_id / "run.html"
        link = (
            f'<a href="{html.escape(r.run_id)}/run.html">{html.escape(r.run_id)}</a>'
            if run_html.is_file()
            else (html.escape(r.run_id))
        )
        cells = [r.params.get("variant"), s.get("train_examples", r.params.get("train_examples")), s.get("total_steps")]
        cells += [finals[r.run_id].get(m) for m in names]
        cells += [s.get("train_flops"), s.get("device_seconds"), len(s.get("branches", []))]
        shown = [None] * (3 + len(names)) + [formats.flops, None, None]
        status = index[r.run_id]
        rows.append(
            f'<tr class="{status}"><td>{link}</td><td>{status}</td>'
            + "".join(page.cell(c, f) for c, f in zip(cells, shown))
            + "</tr>"
        )
    scaling = out / "scaling" / "report.html"
    done = sum(v == "done" for v in index.values())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(sweep.name)}</title>
{page.STYLE}{page.SORTER}
<style>body{{font-family:sans-serif;margin:2em}}tr.failed{{background:#fdd}}
tr.interrupted,tr.pending{{color:#777}}</style></head><body>
<h1>Sweep {html.escape(sweep.name)}</h1>
<p>{done} of {len(index)} runs done (notebook {html.escape(sweep.notebook)}).
{'<a id="scaling" href="scaling/report.html">Scaling report</a>' if scaling.is_file() else "No scaling report yet."}</p>
<div class="vs-table-wrap"><table class="vs-table" id="runs">
<thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></div></body></html>
"""
