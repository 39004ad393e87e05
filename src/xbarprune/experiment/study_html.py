"""``report.html`` beside a study's ``summary.md`` (issue #21, item 6).

Generic over ``summary.json``: the header (command, wall time, machine) becomes the page's
metadata, ``rows`` the sortable table (one per other list of row dicts, e.g. ``ablation``), the
pictures that summary.md links (``![..](x.png)``) are inlined, and summary.md itself is folded at
the end. A study may register interactive plots (:func:`html_plots`) that replace some of its
pictures, e.g. the sparse-DNN study's 20-series accuracy-drop plot, drawn as facets with
toggles. The page itself is built by :mod:`xbarprune.report.html`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xbarprune.report.html import Image, Plot, Table, Text, write_html

#: kind -> (plot builder over the summary, names of the pictures it replaces)
_PLOTS: dict[str, tuple[Callable[[dict], list[Plot]], tuple[str, ...]]] = {}

_HEADER_KEYS = ("command", "wall_time_s", "machine", "quick", "trials")
_PICTURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.(?:png|svg))\)")


def html_plots(kind: str, replaces: tuple[str, ...] = ()):
    """Register ``fn(summary) -> [plots]`` for study ``kind``; ``replaces``: the PNG names of
    summary.md that these plots stand in for (they are not inlined again)."""

    def deco(fn: Callable[[dict], list[Plot]]):
        _PLOTS[kind] = (fn, tuple(replaces))
        return fn

    return deco


def _row_lists(summary: dict) -> list[tuple[str, list[dict]]]:
    out = [("rows", summary.get("rows") or [])]
    for k, v in summary.items():
        if k != "rows" and isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            out.append((k, v))
    return out


def study_report(kind: str, summary: dict, out_dir: Path) -> dict[str, Any]:
    """The keyword arguments of :func:`~xbarprune.report.html.write_html` for a study."""
    meta = {k: summary[k] for k in _HEADER_KEYS if k in summary}
    tables = [Table(f"{name} ({len(rows)})", rows) for name, rows in _row_lists(summary) if rows]
    plots: list[Plot] = []
    replaced: tuple[str, ...] = ()
    if kind in _PLOTS:
        fn, replaced = _PLOTS[kind]
        plots += fn(summary)
    md = out_dir / "summary.md"
    texts = []
    if md.is_file():
        text = md.read_text()
        for name in dict.fromkeys(_PICTURE.findall(text)):
            p = out_dir / name
            if name not in replaced and p.is_file() and p.resolve().parent == out_dir.resolve():
                plots.append(Image(name, path=p))
        texts.append(Text("summary.md", text))
    if "config" in summary:
        texts.append(Text("config", json.dumps(summary["config"], indent=1, default=str)))
    return {"meta": meta, "tables": tables, "plots": plots, "texts": texts}


def write_study_html(kind: str, out_dir: str | Path) -> Path | None:
    """Write ``<out_dir>/report.html`` from ``<out_dir>/summary.json`` (None if there is none)."""
    out = Path(out_dir)
    f = out / "summary.json"
    if not f.is_file():
        return None
    summary = json.loads(f.read_text())
    return write_html(out / "report.html", f"xbarprune {kind}", **study_report(kind, summary, out))
