"""How every report shows numbers: one set of formatting helpers and plain HTML tables, sections and
collapsible details (no plotly tables, so nothing is clipped), fully offline.

Tables sort by a click on a header (a few lines of inline JavaScript, no CDN); a cell's `data-sort`
keeps the exact value and its `title` the full number, whatever the text shows.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "count",
    "flops",
    "integer",
    "number",
    "percent",
    "percent_spread",
    "with_interval",
    "auto",
    "Html",
    "table",
    "cell",
    "details",
    "section",
    "paragraph",
    "STYLE",
    "Sentence",
]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def number(v: Any, digits: int = 4) -> str:
    """A float for reading: `digits` significant digits, exponents as `1.39e10` (not `1.39e+10`)."""
    if not _finite(v):
        return "" if v is None else str(v)
    s = f"{v:.{digits}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def count(v: Any) -> str:
    """A count with SI suffix: parameters 205,312 -> `205k`, 6,712,000 -> `6.71M`."""
    if not _finite(v):
        return "" if v is None else str(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:g}"


def flops(v: Any) -> str:
    """Compute as `1.39e10 (13.9 GFLOP)`: the exponent for comparing, the unit for reading."""
    if not _finite(v):
        return "" if v is None else str(v)
    for div, unit in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if abs(v) >= div:
            return f"{number(v, 3)} ({v / div:.3g} {unit})"
    return number(v, 3)


def integer(v: Any) -> str:
    """An exact integer with thousands separators: 13,866,762,240."""
    if not _finite(v):
        return "" if v is None else str(v)
    return f"{round(v):,}"


def percent(v: Any, interval: Sequence[float] | None = None, digits: int = 3) -> str:
    """A fraction (an error, an accuracy) as `12.3%`, with its interval as `12.3% [11.0, 13.5]`."""
    if not _finite(v):
        return "" if v is None else str(v)
    s = f"{100 * v:.{digits}g}%"
    if interval:
        s += f" [{100 * interval[0]:.{digits}g}, {100 * interval[1]:.{digits}g}]"
    return s


def percent_spread(mean: Any, std: Any = None) -> str:
    """A mean accuracy and its spread over seeds, in percent: `81.2 ± 1.3`."""
    if not _finite(mean):
        return ""
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if _finite(std) else "")


def with_interval(v: Any, interval: Sequence[float] | None = None, flags: Sequence[str] = ()) -> str:
    """A fitted constant as `0.35 [0.33, 0.37]`, plus flags such as `(at bound)`."""
    s = number(v)
    if interval:
        s += f" [{number(interval[0], 3)}, {number(interval[1], 3)}]"
    return s + "".join(f" ({f})" for f in flags)


def auto(v: Any) -> str:
    """The default cell text: floats with 4 significant digits, integers exact, None empty."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return integer(v)
    if isinstance(v, float):
        return number(v)
    return str(v)


# ----------------------------------------------------------------------------- HTML
# One style sheet and one sorter; every table, section and details block carries them (they are small),
# so a fragment reads the same in JupyterLab, in nbconvert's HTML and in the sweep index.
STYLE = """<style>
.vs-table-wrap{overflow-x:auto;max-width:100%;margin:0.4em 0 1em 0}
table.vs-table{border-collapse:collapse;font-size:13px;font-family:sans-serif}
table.vs-table caption{text-align:left;font-weight:bold;padding:2px 0 6px 0}
table.vs-table th,table.vs-table td{border:1px solid #ccc !important;padding:3px 7px !important;
text-align:left !important;vertical-align:top !important;white-space:normal;overflow-wrap:break-word;max-width:60em}
table.vs-table td.num{text-align:right !important;white-space:nowrap}
table.vs-table th{background:#f3f3f3;cursor:pointer}
.vs-headline{border-left:4px solid #2a6;padding:4px 12px;margin:0.6em 0;background:#f6fbf8;font-family:sans-serif}
.vs-headline h3{margin:0.3em 0}
details.vs-details{margin:0.6em 0}
details.vs-details>summary{font-weight:bold;font-size:1.1em;cursor:pointer;font-family:sans-serif}
</style>"""
SORTER = """<script>
(function(){if(window.vsSortInstalled)return;window.vsSortInstalled=true;
document.addEventListener('click',function(e){var th=e.target.closest&&e.target.closest('table.vs-table th');
if(!th)return;var t=th.closest('table'),i=Array.prototype.indexOf.call(th.parentNode.children,th),
b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),up=th.dataset.dir!=='asc';th.dataset.dir=up?'asc':'desc';
function k(r){var c=r.cells[i];if(!c)return '';var s=c.getAttribute('data-sort');var n=parseFloat(s);
return (s!==null&&s!==''&&!isNaN(n))?n:c.textContent;}
rows.sort(function(x,y){var a=k(x),c=k(y);
var r=(typeof a==='number'&&typeof c==='number')?a-c:String(a).localeCompare(String(c));
return up?r:-r;});rows.forEach(function(r){b.appendChild(r);});});
document.addEventListener('toggle',function(){window.dispatchEvent(new Event('resize'));},true);})();
</script>"""


class Html:
    """An HTML fragment a notebook shows (`.show()`, like a figure) and nbconvert keeps as text/html."""

    def __init__(self, body: str):
        self.body = body

    def _repr_html_(self) -> str:
        return STYLE + SORTER + self.body

    def show(self) -> None:
        from IPython.display import HTML, display  # IPython is there wherever a report is shown

        display(HTML(self._repr_html_()))

    def __str__(self) -> str:
        return self.body

    def __repr__(self) -> str:
        return f"Html({self.body[:80]!r}...)"


def cell(v: Any, fmt: Callable[[Any], str] | None = None) -> str:
    """One <td>: the text `fmt` (default `auto`) gives, the exact number kept for sorting and hovering."""
    text = (fmt or auto)(v)
    if _finite(v):
        return f'<td class="num" data-sort="{float(v)!r}" title="{v!r}">{html.escape(text)}</td>'
    if isinstance(v, Html):
        return f"<td>{v.body}</td>"
    return f"<td>{html.escape(text)}</td>"


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    title: str = "",
    formats: Mapping[str, Callable[[Any], str]] | None = None,
    table_id: str = "",
) -> Html:
    """An HTML table of `rows` (dicts) over `columns`, each cell formatted by `formats[column]` or `auto`;
    in a wrapper that scrolls sideways on a narrow page instead of clipping."""
    columns = list(columns or (rows[0].keys() if rows else []))
    formats = formats or {}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(cell(r.get(c), formats.get(c)) for c in columns) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(title)}</caption>" if title else ""
    tid = f' id="{html.escape(table_id)}"' if table_id else ""
    return Html(
        f'<div class="vs-table-wrap"><table class="vs-table"{tid}>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _body(part: Any) -> str:
    if isinstance(part, Html):
        return part.body
    if hasattr(part, "to_html"):  # a plotly figure: plotly.js is on the page already, MathJax is not wanted
        return part.to_html(
            full_html=False, include_plotlyjs=False, include_mathjax=False, default_width="100%", validate=False
        )
    if hasattr(part, "text"):  # plots.Sentence
        return paragraph(part.text).body
    return html.escape(str(part))


def paragraph(text: str) -> Html:
    """A sentence in a paragraph; `code` spans in backticks as Markdown writes them."""
    parts = html.escape(text).split("`")
    return Html("<p>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + "</p>")


def details(summary: str, *parts: Any, open: bool = False) -> Html:  # noqa: A002 - the HTML attribute's name
    """A collapsible block: `summary` always shown, `parts` (Html, figures, sentences) when opened."""
    inner = "\n".join(_body(p) for p in parts)
    return Html(
        f'<details class="vs-details"{" open" if open else ""}><summary>{html.escape(summary)}</summary>\n'
        f"{inner}\n</details>"
    )


def section(*parts: Any, css: str = "") -> Html:
    """Parts one after the other in one block (a class such as `vs-headline` styles it)."""
    inner = "\n".join(_body(p) for p in parts)
    return Html(f'<div class="{html.escape(css)}">{inner}</div>' if css else inner)


class Sentence:
    """What a report shows instead of a figure with nothing in it: one sentence (as Markdown)."""

    def __init__(self, text: str):
        self.text = text

    def show(self) -> None:
        paragraph(self.text).show()

    def __repr__(self) -> str:
        return f"Sentence({self.text!r})"


NO_FEWSHOT = Sentence("No few-shot evaluation in this run (parameter `fewshot_datasets`).")

NO_FINETUNING = Sentence("No fine-tuning in this run (parameter `finetune_datasets`).")
