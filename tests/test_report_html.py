"""report.html (issue #21, item 6): one offline file, sortable tables, plots with toggles.

The page tests run in headless Chromium (Debian package ``chromium``; .ci/run installs it) and
are skipped when it is absent. The rest check the HTML text and the occupancy plot directly.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _chromium import Chromium, find_chromium  # noqa: E402
from xbarprune.report.html import (  # noqa: E402
    Image,
    LinePlot,
    Series,
    Table,
    Text,
    flatten,
    render_html,
    write_html,
)

CHROMIUM = find_chromium()

#: a run of a few seconds (the embedded MNIST subset), as in tests/test_pipeline.py
TINY = {
    "name": "tiny",
    "seed": 3,
    "model": {"name": "lenet5"},
    "data": {"name": "mnist-embedded", "val_size": 0.1, "train_subset": 800, "test_subset": 300},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.003, "progress": False},
    "method": {
        "name": "group-magnitude",
        "params": {"sparsity": 0.6, "kind": "tile_column", "steps": 2, "epochs_per_step": 1},
    },
    "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.001, "progress": False},
    "crossbar": {"rows": 32, "cols": 32},
    "nonideal": "reram",
    "evaluate": {"times": ["1s", "1d"], "trials": 2, "seed": 1},
    "runtime": {"device": "cpu"},
}
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

ROWS = [
    {
        "arm": "b10",
        "acc": 0.912,
        "n": 10,
        "cfg": {"lam": 1e-4, "kind": "col"},
        "note": None,
        "size": 1234567.0,
    },
    {"arm": "a2", "acc": 0.5, "n": 2, "cfg": {"lam": 3.0, "kind": "row"}, "note": "x", "size": 2e5},
    {
        "arm": "b9",
        "acc": None,
        "n": 100,
        "cfg": {"lam": 0.25},
        "note": "<script>bad()</script>",
        "size": 30.0,
    },
    {
        "arm": "a10",
        "acc": -0.25,
        "n": 7,
        "cfg": {"lam": 2.0, "kind": "col"},
        "q": list(range(30)),
        "size": 5e-5,
    },
    {"arm": "c1", "acc": 0.5, "n": 1, "cfg": {"lam": 0.0, "kind": "tile"}, "size": 7.0},
]


def _sparse_like_plot() -> LinePlot:
    """3 schemes x 2 mitigations in 2 facets: 12 series, 5 checkboxes."""
    series = []
    for facet in ("vgg11 / 32x32", "resnet20 / 32x32"):
        for i, scheme in enumerate(("cf", "xcs", "xrs")):
            for j, (mit, ls) in enumerate((("none", "-"), ("wct", "--"))):
                series.append(
                    Series([1.0, 1.5, 2.0], [i + j, i + j + 1.0, i + 0.5], yerr=[0.1, 0.2, 0.1],
                           label=f"{scheme}/{mit}", facet=facet,
                           tags={"scheme": scheme, "mitigation": mit},
                           style={"color": f"C{i}", "linestyle": ls})
                )  # fmt: skip
    return LinePlot("drop", series, xlabel="CCR", ylabel="drop (pp)")


def _page(path: Path) -> Path:
    png = path.parent / "tiny.png"
    png.write_bytes(
        bytes.fromhex(  # a 1x1 PNG
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6300010000050001"
            "0d0a2db40000000049454e44ae426082"
        )
    )
    return write_html(
        path,
        "test report",
        meta={"command": "xbarprune compare x.yaml", "wall_time_s": 1.5},
        tables=[Table("rows", ROWS), Table("second", [{"k": 3}, {"k": 1}])],
        plots=[_sparse_like_plot(), Image("picture", path=png)],
        texts=[Text("summary.md", "# title\n| a | b |")],
    )


# ---------------------------------------------------------------------------- no browser
def test_flatten_nested_keys():
    assert flatten({"a": 1, "b": {"c": 2, "d": {"e": None}}}) == {"a": 1, "b.c": 2, "b.d.e": None}


def test_page_is_self_contained_and_escaped(tmp_path):
    text = _page(tmp_path / "r.html").read_text()
    # nothing is fetched: no external src/href, no stylesheet link, no CDN
    for attr in re.findall(r'\b(?:src|href)="([^"]*)"', text):
        assert attr.startswith(("data:", "#")), attr
    # the only URLs are XML namespace names (never fetched)
    assert set(re.findall(r'(\S+)="https?://', text)) <= {"xmlns", "xmlns:xlink"}
    assert "<script>bad()</script>" not in text and "&lt;script&gt;bad()" in text
    # raw numbers travel in data-v (sorting), rounded text is shown
    assert 'data-v="0.912"' in text and 'data-v="-0.25"' in text and 'data-v="0.0001"' in text
    assert "[30 values]" in text
    # one SVG group per series x artist, ids p0-s<series>-<facet>-<artist>
    ids = set(re.findall(r'id="(p0-s\d+-\d-\d)"', text))
    assert {i.split("-")[1] for i in ids} == {f"s{k}" for k in range(12)}
    assert len(re.findall(r'type="checkbox"', text)) == 3 + 2


def test_html_escapes_titles():
    page = render_html("a < b & c", tables=[Table("t", [{"x<y": "1 & 2"}])])
    assert "<title>a &lt; b &amp; c</title>" in page
    assert "x&lt;y" in page and "1 &amp; 2" in page


# ---------------------------------------------------------------------------- in Chromium
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    with Chromium(CHROMIUM) as c:
        yield c


def _col(c: Chromium, table: int, col: int) -> list[str]:
    return c.eval(
        f"Array.from(document.querySelectorAll('table.sortable')[{table}].tBodies[0].rows)"
        f".map(r => r.cells[{col}].textContent)"
    )


@needs_chromium
def test_table_sorts_and_filters_in_chromium(browser, tmp_path):
    page = _page(tmp_path / "r.html")
    browser.open(page)
    assert browser.eval("document.querySelectorAll('table.sortable').length") == 2
    assert (
        browser.eval("document.querySelectorAll('table.sortable')[0].tBodies[0].rows.length") == 5
    )
    heads = browser.eval("Array.from(document.querySelectorAll('table.sortable')[0].tHead"
                         ".rows[0].cells).map(c => c.textContent)")  # fmt: skip
    assert heads == ["arm", "acc", "n", "cfg.lam", "cfg.kind", "note", "size", "q"]

    def click(col: int) -> None:
        browser.eval(f"document.querySelectorAll('table.sortable')[0].tHead.rows[0].cells[{col}]"
                     ".click()")  # fmt: skip

    click(2)  # n, numeric: 1 2 7 10 100 (text order would put 100 before 2)
    assert _col(browser, 0, 2) == ["1", "2", "7", "10", "100"]
    click(2)
    assert _col(browser, 0, 2) == ["100", "10", "7", "2", "1"]
    click(1)  # acc ascending; the empty cell last; ties (0.5) keep the original order a2, c1
    assert _col(browser, 0, 0) == ["a10", "a2", "c1", "b10", "b9"]
    click(1)
    assert _col(browser, 0, 0) == ["b10", "a2", "c1", "a10", "b9"]
    click(3)  # cfg.lam: sorted as numbers (text order would put 0.0001 before 0.25 too)
    assert _col(browser, 0, 3) == ["0", "0.0001", "0.25", "2", "3"]
    click(6)  # size: shown rounded (1.235e+06, 2e+05, 30, 5e-05, 7), sorted by value
    assert _col(browser, 0, 0) == ["a10", "c1", "b9", "a2", "b10"]
    click(0)  # text, numeric-aware: a2 < a10 < b9 < b10
    assert _col(browser, 0, 0) == ["a2", "a10", "b9", "b10", "c1"]
    assert browser.eval("document.querySelectorAll('table.sortable')[0].tHead.rows[0].cells[0]"
                        ".getAttribute('aria-sort')") == "ascending"  # fmt: skip
    browser.eval("var i=document.querySelector('section.tbl input');i.value='col';"
                 "i.dispatchEvent(new Event('input'))")  # fmt: skip
    shown = browser.eval("Array.from(document.querySelectorAll('table.sortable')[0].tBodies[0]"
                         ".rows).filter(r => r.style.display !== 'none').length")  # fmt: skip
    assert shown == 2
    assert browser.eval("document.querySelector('section.tbl .count').textContent") == "2 of 5 rows"
    assert browser.errors() == []


@needs_chromium
def test_plot_toggles_hide_series_in_chromium(browser, tmp_path):
    browser.open(_page(tmp_path / "r.html"))

    def hidden() -> list[int]:
        return browser.eval(
            "Array.from({length: 12}, (_, i) => i).filter(i => Array.from("
            "document.querySelectorAll('[id^=\"p0-s' + i + '-\"]')).every("
            "g => g.style.display === 'none'))"
        )

    assert hidden() == []
    browser.eval("document.querySelector('input[data-dim=scheme][value=xcs]').click()")
    # series order: facet, scheme, mitigation -> xcs is series 2, 3 (facet 0), 8, 9 (facet 1)
    assert hidden() == [2, 3, 8, 9]
    browser.eval("document.querySelector('input[data-dim=mitigation][value=wct]').click()")
    assert hidden() == [1, 2, 3, 5, 7, 8, 9, 11]
    browser.eval("document.querySelectorAll('section.plot .dim')[0].querySelector('button.all')"
                 ".click()")  # fmt: skip
    assert hidden() == [1, 3, 5, 7, 9, 11]
    # every series draws in its own facet: 12 line groups, each with its error bars
    assert browser.eval("document.querySelectorAll('section.plot svg [id$=\"-0\"]').length") == 12
    assert browser.eval("document.querySelector('section.plot img').naturalWidth") == 1
    assert browser.errors() == []


@needs_chromium
def test_run_report_html_in_chromium(browser, tmp_path):
    """``xbarprune run`` writes report.html: 2 models x 2 drift times, one row per layer."""
    from xbarprune.experiment.config import load_config
    from xbarprune.experiment.pipeline import Run

    rep = Run(load_config(TINY), tmp_path / "run", log=lambda s: None).run()
    page = tmp_path / "run" / "report.html"
    browser.open(page)
    counts = browser.eval("Array.from(document.querySelectorAll('table.sortable'))"
                          ".map(t => t.tBodies[0].rows.length)")  # fmt: skip
    assert counts == [2 * len(TINY["evaluate"]["times"]), len(rep["layers"])]
    browser.eval("document.querySelectorAll('table.sortable')[1].tHead.rows[0].cells[3].click()")
    tiles = [int(v) for v in _col(browser, 1, 3)]
    assert tiles == sorted(r["tiles_dense"] for r in rep["layers"])
    mean = [float(v) for v in _col(browser, 0, 5)]
    expect = [100 * r["mean"] for k in ("dense", "compressed")
              for r in rep["accuracy"][f"{k}_nonideal"].values()]  # fmt: skip
    assert mean == pytest.approx(expect, abs=0.01)
    assert browser.eval("document.querySelectorAll('section.plot img').length") == 2
    assert browser.errors() == []
    shot = Path(tempfile.gettempdir()) / "xbarprune_run_report.png"
    assert browser.screenshot(shot).stat().st_size > 10_000
