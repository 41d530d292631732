"""How every report shows its parts: plain HTML tables, sections and collapsible details (no plotly
tables, so nothing is clipped), fully offline; numbers in them are written by vitscale.formats.

Tables sort by a click on a header (a few lines of inline JavaScript, no CDN); a cell's `data-sort`
keeps the exact value and its `title` the full number, whatever the text shows.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vitscale import formats

__all__ = [
    "Html",
    "table",
    "cell",
    "details",
    "section",
    "paragraph",
    "STYLE",
    "Sentence",
]


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
    text = (fmt or formats.auto)(v)
    if formats.finite(v):
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
