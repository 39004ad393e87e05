"""One self-contained, offline HTML report: sortable tables and plots (issue #21, item 6).

This module knows nothing about experiments. It takes plain data:

* :class:`Table` — rows as mappings (nested mappings are flattened to ``a.b`` columns);
* :class:`LinePlot` — x/y series with optional error bars, *facets* (one panel per facet value)
  and *tags* (one checkbox group per tag key: a series is shown when every one of its tag values
  is ticked), so a plot of many series stays readable (e.g. 4 schemes x 5 mitigations = 9
  checkboxes instead of a 20-entry legend);
* :class:`Image` — a picture already rendered (PNG or SVG bytes), inlined as a data URI;
* :class:`Text` — preformatted text (e.g. the summary's markdown), folded.

Everything is inlined: the plots are matplotlib SVG (``svg.fonttype = none``, so labels stay
text), pictures are base64 data URIs, the CSS and the few lines of JavaScript (sorting, filter,
toggles) are written in the page. Nothing is fetched: the file works offline and from
``file://``. With JavaScript off, the tables and every series are still shown. matplotlib (a
dependency already) rather than plotly: no new dependency and no ~3.5 MB of inlined JavaScript
per file; the interactivity a report needs (sorting, filtering, showing/hiding series) is a few
dozen lines here.

Sorting is numeric when every non-empty cell of a column is a number (the raw value travels in
``data-v``; the shown text is rounded), else by text (``localeCompare`` with ``numeric``);
empty cells sort last in both directions; ties keep the original row order.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xbarprune.io import atomic_write_text

__all__ = [
    "Image",
    "LinePlot",
    "Series",
    "Table",
    "Text",
    "flatten",
    "render_html",
    "write_html",
]


# ---------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Table:
    """A sortable table. ``columns``: the keys to show, in order (default: every key of the
    flattened rows, in order of first appearance)."""

    title: str
    rows: Sequence[Mapping[str, Any]]
    columns: Sequence[str] | None = None
    caption: str = ""


@dataclass(frozen=True)
class Series:
    """One line of a :class:`LinePlot`.

    ``tags``: e.g. ``{"scheme": "xcs", "mitigation": "wct"}``; ``facet``: the panel it is drawn
    in; ``style``: matplotlib keywords (``color``, ``linestyle``, ``marker``, ...).
    """

    x: Sequence[float]
    y: Sequence[float]
    label: str = ""
    yerr: Sequence[float] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    facet: str = ""
    style: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LinePlot:
    title: str
    series: Sequence[Series]
    xlabel: str = ""
    ylabel: str = ""
    xscale: str = "linear"
    caption: str = ""
    panel_size: tuple[float, float] = (4.6, 3.3)
    max_columns: int = 3


@dataclass(frozen=True)
class Image:
    """A picture already rendered: PNG or SVG bytes (``kind``), or read from ``path``."""

    title: str
    data: bytes | None = None
    kind: str = "png"
    path: str | Path | None = None
    caption: str = ""

    def payload(self) -> tuple[bytes, str]:
        if self.data is not None:
            return self.data, self.kind
        if self.path is None:
            raise ValueError(f"Image {self.title!r}: give data or path")
        p = Path(self.path)
        return p.read_bytes(), p.suffix.lstrip(".").lower() or self.kind


@dataclass(frozen=True)
class Text:
    title: str
    text: str
    open: bool = False


Plot = LinePlot | Image


# ---------------------------------------------------------------------------- tables
def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become ``a.b`` keys; other values are kept as they are."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _cell(v: Any) -> tuple[str, str | None]:
    """(shown text, numeric sort value or None) of one cell."""
    if v is None:
        return "", None
    if isinstance(v, bool):
        return ("true" if v else "false"), None
    if isinstance(v, int):
        return str(v), repr(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN", None
        if math.isinf(v):
            return ("∞" if v > 0 else "−∞"), None
        return f"{v:.4g}", repr(v)
    if isinstance(v, list | tuple):
        if len(v) <= 8 and all(not isinstance(e, Mapping | list | tuple) for e in v):
            return json.dumps(list(v), default=str), None
        return f"[{len(v)} values]", None
    return str(v), None


def _table_html(t: Table, tid: str) -> str:
    rows = [flatten(r) for r in t.rows]
    cols = (
        list(t.columns)
        if t.columns is not None
        else list(dict.fromkeys(k for r in rows for k in r))
    )
    head = "".join(
        f'<th scope="col" tabindex="0" aria-sort="none" title="sort by {html.escape(c)}">'
        f"{html.escape(c)}</th>"
        for c in cols
    )
    body = []
    for i, r in enumerate(rows):
        cells = []
        for c in cols:
            text, num = _cell(r.get(c))
            attr = f' data-v="{num}"' if num is not None else ""
            full = html.escape(str(r.get(c))) if text.startswith("[") and "values]" in text else ""
            tip = f' title="{full[:2000]}"' if full else ""
            cells.append(f"<td{attr}{tip}>{html.escape(text)}</td>")
        body.append(f'<tr data-i="{i}">' + "".join(cells) + "</tr>")
    cap = f"<p class=cap>{html.escape(t.caption)}</p>" if t.caption else ""
    return (
        f'<section class="tbl" id="{tid}"><h2>{html.escape(t.title)}</h2>{cap}'
        f'<div class="tools"><input type="search" placeholder="filter rows" aria-label="filter '
        f'rows"> <span class="count">{len(rows)} of {len(rows)} rows</span></div>'
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


# ---------------------------------------------------------------------------- plots
_DASH = {"-": "", "solid": "", "--": "6 3", "dashed": "6 3", ":": "1.5 2.5", "dotted": "1.5 2.5",
         "-.": "6 2 1.5 2", "dashdot": "6 2 1.5 2"}  # fmt: skip


def _dasharray(ls: Any) -> str:
    if isinstance(ls, tuple) and len(ls) == 2 and isinstance(ls[1], Sequence):
        return " ".join(f"{float(v):g}" for v in ls[1])
    return _DASH.get(str(ls), "")


def _swatch(styles: Sequence[Mapping[str, Any]]) -> str:
    """A small SVG line in the style the series of one toggle share (grey when they differ)."""
    colors = {str(s.get("color", "")) for s in styles}
    dashes = {_dasharray(s.get("linestyle", "-")) for s in styles}
    color = colors.pop() if len(colors) == 1 and "" not in colors else "#888"
    dash = dashes.pop() if len(dashes) == 1 else ""
    da = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<svg class="sw" width="26" height="10" aria-hidden="true"><line x1="1" y1="5" x2="25" '
        f'y2="5" stroke="{html.escape(_css_color(color))}" stroke-width="2"{da}/></svg>'
    )


def _css_color(c: str) -> str:
    try:
        from matplotlib.colors import to_hex

        return to_hex(c)
    except (ValueError, ImportError):
        return "#888"


def _series_styles(plot: LinePlot) -> list[dict[str, Any]]:
    """Each series' style, with a colour per label where none is given (stable across facets)."""
    labels = list(dict.fromkeys(s.label for s in plot.series))
    out = []
    for s in plot.series:
        st = {"marker": "o", "markersize": 3, "linewidth": 1.3, **dict(s.style)}
        st.setdefault("color", f"C{labels.index(s.label) % 10}")
        out.append(st)
    return out


def _toggle_dims(plot: LinePlot) -> dict[str, list[str]]:
    """Tag key -> values, in order of first appearance; series without tags toggle by label."""
    dims: dict[str, list[str]] = {}
    for s in plot.series:
        for k, v in _tags(s).items():
            dims.setdefault(k, [])
            if v not in dims[k]:
                dims[k].append(v)
    return dims


def _tags(s: Series) -> dict[str, str]:
    return {str(k): str(v) for k, v in s.tags.items()} if s.tags else {"series": s.label}


def _svg_of(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with _rc():
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE
    return re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)  # RDF block


def _rc():
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "xbarprune"})


def _line_plot_html(plot: LinePlot, pid: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facets = list(dict.fromkeys(s.facet for s in plot.series)) or [""]
    ncol = max(1, min(plot.max_columns, len(facets)))
    nrow = math.ceil(len(facets) / ncol)
    w, h = plot.panel_size
    with _rc():
        fig, axes = plt.subplots(nrow, ncol, figsize=(w * ncol, h * nrow), squeeze=False)
    styles = _series_styles(plot)
    for fi, facet in enumerate(facets):
        ax = axes[fi // ncol][fi % ncol]
        for si, (s, st) in enumerate(zip(plot.series, styles, strict=True)):
            if s.facet != facet or not len(s.x):
                continue
            gid = f"{pid}-s{si}-"
            if s.yerr is not None:
                cont = ax.errorbar(list(s.x), list(s.y), yerr=list(s.yerr), capsize=2, **st)
                artists = [cont.lines[0], *cont.lines[1], *cont.lines[2]]
            else:
                artists = ax.plot(list(s.x), list(s.y), **st)
            for k, a in enumerate(artists):
                if a is not None:
                    a.set_gid(f"{gid}{fi}-{k}")
        ax.set_xscale(plot.xscale)
        ax.set_xlabel(plot.xlabel)
        ax.set_ylabel(plot.ylabel)
        if facet:
            ax.set_title(facet, fontsize=9)
        ax.grid(alpha=0.3)
    for fi in range(len(facets), nrow * ncol):
        axes[fi // ncol][fi % ncol].set_visible(False)
    fig.tight_layout()
    svg = _svg_of(fig)
    dims = _toggle_dims(plot)
    series_tags = [_tags(s) for s in plot.series]
    toggles = []
    if len(plot.series) > 1:
        for d, values in dims.items():
            if len(values) < 2 and len(dims) > 1:
                continue
            boxes = []
            for v in values:
                sts = [st for st, t in zip(styles, series_tags, strict=True) if t.get(d) == v]
                boxes.append(
                    f'<label><input type="checkbox" checked data-dim="{html.escape(d)}" '
                    f'value="{html.escape(v)}">{_swatch(sts)}{html.escape(v)}</label>'
                )
            toggles.append(
                f'<div class="dim"><span class="dimname">{html.escape(d)}</span> '
                f'<button type="button" class="all">all</button>'
                f'<button type="button" class="none">none</button> {" ".join(boxes)}</div>'
            )
    meta = json.dumps([{"gid": f"{pid}-s{i}-", "tags": t} for i, t in enumerate(series_tags)])
    cap = f"<p class=cap>{html.escape(plot.caption)}</p>" if plot.caption else ""
    return (
        f'<section class="plot" id="{pid}"><h2>{html.escape(plot.title)}</h2>{cap}'
        f'<div class="toggles">{"".join(toggles)}</div><div class="fig">{svg}</div>'
        f'<script type="application/json" class="series">{_json_in_script(meta)}</script>'
        "</section>"
    )


def _json_in_script(s: str) -> str:
    return s.replace("</", "<\\/")


def _image_html(img: Image, pid: str) -> str:
    data, kind = img.payload()
    mime = {"svg": "image/svg+xml", "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}
    uri = f"data:{mime.get(kind, 'image/png')};base64,{base64.b64encode(data).decode()}"
    cap = f"<p class=cap>{html.escape(img.caption)}</p>" if img.caption else ""
    return (
        f'<section class="plot" id="{pid}"><h2>{html.escape(img.title)}</h2>{cap}'
        f'<div class="fig"><img alt="{html.escape(img.title)}" src="{uri}"></div></section>'
    )


# ---------------------------------------------------------------------------- page
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em 2em;color:#222}
h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.4em 0 .4em}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:0 0 1em}
dl.meta dt{font-weight:600;color:#555}dl.meta dd{margin:0;font-family:ui-monospace,monospace;
 font-size:12px;word-break:break-all}
.scroll{overflow:auto;max-height:70vh;border:1px solid #ddd;display:inline-block;max-width:100%}
table.sortable{border-collapse:collapse;font-size:12px;white-space:nowrap}
table.sortable th{position:sticky;top:0;background:#f3f3f3;cursor:pointer;user-select:none;
 padding:4px 18px 4px 6px;border-bottom:2px solid #bbb;text-align:left;background-repeat:no-repeat}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:#36c}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:#36c}
table.sortable td{padding:3px 6px;border-bottom:1px solid #eee}
table.sortable td[data-v]{text-align:right;font-variant-numeric:tabular-nums}
table.sortable tbody tr:hover{background:#f7fbff}
.tools{margin:.3em 0}.count{color:#666;font-size:12px}.cap{color:#555;margin:.2em 0 .5em}
.toggles .dim{margin:.2em 0;font-size:12px}.dimname{font-weight:600;margin-right:.3em}
.toggles label{margin-right:.7em;white-space:nowrap;cursor:pointer}
.toggles button{font-size:11px;margin-right:.2em}.sw{vertical-align:middle;margin:0 2px}
.fig svg{max-width:100%;height:auto}.fig img{max-width:100%}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:12px}
"""

_JS = r"""
(function(){
"use strict";
function num(td){var v=td.getAttribute("data-v");return v===null?null:parseFloat(v);}
function sortTable(table,col,dir){
  var tb=table.tBodies[0],rows=Array.prototype.slice.call(tb.rows);
  var numeric=rows.every(function(r){var c=r.cells[col];return c.textContent===""||num(c)!==null;});
  rows.sort(function(a,b){
    var ca=a.cells[col],cb=b.cells[col],ea=ca.textContent==="",eb=cb.textContent==="";
    if(ea||eb){return ea&&eb?a.dataset.i-b.dataset.i:(ea?1:-1);}
    var r=numeric?num(ca)-num(cb):ca.textContent.localeCompare(cb.textContent,undefined,
      {numeric:true,sensitivity:"base"});
    if(r===0){return a.dataset.i-b.dataset.i;}
    return dir==="ascending"?r:-r;
  });
  rows.forEach(function(r){tb.appendChild(r);});
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
    th.setAttribute("aria-sort",i===col?dir:"none");});
}
function onHeader(th){
  var table=th.closest("table");
  var dir=th.getAttribute("aria-sort")==="ascending"?"descending":"ascending";
  sortTable(table,th.cellIndex,dir);
}
document.querySelectorAll("table.sortable th").forEach(function(th){
  th.addEventListener("click",function(){onHeader(th);});
  th.addEventListener("keydown",function(e){
    if(e.key==="Enter"||e.key===" "){e.preventDefault();onHeader(th);}});
});
document.querySelectorAll("section.tbl").forEach(function(sec){
  var inp=sec.querySelector("input[type=search]"),cnt=sec.querySelector(".count");
  var rows=sec.querySelectorAll("tbody tr");
  inp.addEventListener("input",function(){
    var q=inp.value.toLowerCase(),n=0;
    rows.forEach(function(r){var ok=!q||r.textContent.toLowerCase().indexOf(q)>=0;
      r.style.display=ok?"":"none";if(ok){n++;}});
    cnt.textContent=n+" of "+rows.length+" rows";
  });
});
document.querySelectorAll("section.plot").forEach(function(sec){
  var meta=sec.querySelector("script.series");if(!meta){return;}
  var series=JSON.parse(meta.textContent),boxes=sec.querySelectorAll("input[type=checkbox]");
  function update(){
    var on={};
    boxes.forEach(function(b){var d=b.dataset.dim;on[d]=on[d]||{};on[d][b.value]=b.checked;});
    series.forEach(function(s){
      var show=Object.keys(s.tags).every(function(d){return !on[d]||on[d][s.tags[d]]!==false;});
      sec.querySelectorAll('[id^="'+s.gid+'"]').forEach(function(g){g.style.display=show?"":"none";});
    });
  }
  boxes.forEach(function(b){b.addEventListener("change",update);});
  sec.querySelectorAll(".dim").forEach(function(dim){
    function all(v){dim.querySelectorAll("input").forEach(function(b){b.checked=v;});update();}
    dim.querySelector("button.all").addEventListener("click",function(){all(true);});
    dim.querySelector("button.none").addEventListener("click",function(){all(false);});
  });
  update();
});
window.xbarpruneSort=function(tableIndex,col,dir){
  sortTable(document.querySelectorAll("table.sortable")[tableIndex],col,dir||"ascending");};
})();
"""


def render_html(
    title: str,
    *,
    meta: Mapping[str, Any] | None = None,
    tables: Sequence[Table] = (),
    plots: Sequence[Plot] = (),
    texts: Sequence[Text] = (),
) -> str:
    """The whole page as one string (tables first, then plots, then folded texts)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if meta:
        items = "".join(
            f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_meta_value(v))}</dd>"
            for k, v in meta.items()
        )
        parts.append(f'<dl class="meta">{items}</dl>')
    for i, t in enumerate(tables):
        parts.append(_table_html(t, f"t{i}"))
    for i, p in enumerate(plots):
        if isinstance(p, LinePlot):
            parts.append(_line_plot_html(p, f"p{i}"))
        elif isinstance(p, Image):
            parts.append(_image_html(p, f"p{i}"))
        else:
            raise TypeError(f"plot {i}: expected LinePlot or Image, got {type(p).__name__}")
    for tx in texts:
        op = " open" if tx.open else ""
        parts.append(
            f"<details{op}><summary>{html.escape(tx.title)}</summary>"
            f"<pre>{html.escape(tx.text)}</pre></details>"
        )
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n<script>{_JS}</script>\n</body></html>\n"
    )


def _meta_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def write_html(path: str | Path, title: str, **kw: Any) -> Path:
    """Render (see :func:`render_html`) and write atomically; returns the path."""
    p = Path(path)
    atomic_write_text(p, render_html(title, **kw))
    return p
