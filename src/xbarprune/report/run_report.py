"""Assemble ``report.json`` (source of truth), ``report.md``, ``report.html`` (one offline file:
sortable tables, plots; :mod:`xbarprune.report.html`) and PNG plots from a run directory."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xbarprune.io import atomic_write_json, atomic_write_text, ensure_dir, load_checkpoint
from xbarprune.provenance import describe_nonideal, versions
from xbarprune.report import plots
from xbarprune.report.html import Image, LinePlot, Series, Table, Text, write_html
from xbarprune.units import format_time


def _by_time(rows: list[dict]) -> dict[str, dict]:
    return {format_time(r["time_s"]): r for r in rows}


def build_report(run) -> dict[str, Any]:
    cfg = run.cfg
    st = run.stages
    train_ck = load_checkpoint(st / "train.pt")
    comp_ck = load_checkpoint(st / "compress.pt")
    ft_ck = load_checkpoint(st / "finetune.pt")
    mp = json.loads((st / "map.json").read_text())
    sim = json.loads((st / "simulate.json").read_text())
    method_params = dict(cfg.method.params)
    group_kind = method_params.get("kind", "tile_column")
    if group_kind not in mp["sparsity"]["group"]:  # a method-specific group kind
        group_kind = "tile_column"
    dense_x, comp_x = mp["crossbars"]["dense"], mp["crossbars"]["compressed"]
    rep: dict[str, Any] = {
        "name": cfg.name,
        "model": cfg.model.name,
        "dataset": {
            "name": run.splits.name,
            "source": run.splits.source,
            "test_size": len(run.splits.test),
        },
        "method": {"name": cfg.method.name, "params": method_params, "info": comp_ck["info"]},
        "crossbar": asdict(cfg.crossbar),
        "device": asdict(cfg.device),
        "nonideal": describe_nonideal(cfg),
        "seeds": {"experiment": cfg.seed, "evaluate": cfg.evaluate.seed},
        "accuracy": {
            "dense_ideal": sim["dense"]["digital"] if "dense" in sim else None,
            "compressed_ideal": sim["compressed"]["digital"],
            "dense_analog_ideal": sim["dense"]["analog_ideal"] if "dense" in sim else None,
            "compressed_analog_ideal": sim["compressed"]["analog_ideal"],
            "dense_nonideal": _by_time(sim["dense"]["nonideal"]) if "dense" in sim else None,
            "compressed_nonideal": _by_time(sim["compressed"]["nonideal"]),
        },
        "sparsity": {
            "weight": mp["sparsity"]["weight"],
            "group": mp["sparsity"]["group"][group_kind],
            "group_kind": group_kind,
            "group_all": mp["sparsity"]["group"],
            "crossbar_saving": 1.0 - comp_x / dense_x if dense_x else 0.0,
        },
        "crossbars": {"dense": dense_x, "compressed": comp_x},
        "coverage": mp.get("coverage"),
        "cost": mp["cost"],
        "layers": mp["layers"],
        "timing": {
            "train": train_ck.get("seconds"),
            "compress": comp_ck.get("seconds"),
            "finetune": ft_ck.get("seconds"),
            "simulate": sum(sim[k]["seconds"] for k in ("dense", "compressed") if k in sim),
        },
        # the part of each stage's seconds that an earlier, interrupted invocation ran (its
        # training epochs, loaded from their checkpoints by the invocation that finished it)
        "timing_resumed": {
            k: float(ck["seconds_resumed"])
            for k, ck in (("train", train_ck), ("compress", comp_ck), ("finetune", ft_ck))
            if ck.get("seconds_resumed")
        },
        "history": {"train": train_ck.get("history", []), "finetune": ft_ck.get("history", [])},
        "evaluate": {"trials": sim["trials"], "times_s": sim["times_s"]},
        "versions": versions(),
    }
    return rep


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def to_markdown(rep: dict) -> str:
    a = rep["accuracy"]
    lines = [
        f"# xbarprune report: {rep['name']}",
        "",
        f"- model **{rep['model']}**, dataset **{rep['dataset']['name']}** "
        f"({rep['dataset']['test_size']} test images)",
        f"- method **{rep['method']['name']}** {json.dumps(rep['method']['params'])}",
        f"- crossbar {rep['crossbar']['rows']}x{rep['crossbar']['cols']}, "
        f"{rep['crossbar']['encoding']}, {rep['crossbar']['cells_per_weight']} cell(s)/weight; "
        f"device G {rep['device']['g_min']:g}–{rep['device']['g_max']:g} S, "
        f"{rep['device']['levels']} levels",
        f"- non-idealities: `{json.dumps(rep['nonideal'])}`",
        f"- Monte Carlo: {rep['evaluate']['trials']} trials, seed {rep['seeds']['evaluate']}",
        "",
        "## Accuracy (%)",
        "",
        "| model | digital | analog ideal | "
        + " | ".join(f"non-ideal @ {t}" for t in a["compressed_nonideal"])
        + " |",
        "|---|---|---|" + "---|" * len(a["compressed_nonideal"]),
    ]
    for tag in ("dense", "compressed"):
        ni = a.get(f"{tag}_nonideal")
        if ni is None:
            continue
        cells = " | ".join(f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}" for r in ni.values())
        lines.append(
            f"| {tag} | {_pct(a[f'{tag}_ideal'])} | {_pct(a[f'{tag}_analog_ideal'])} | {cells} |"
        )
    s, x = rep["sparsity"], rep["crossbars"]
    cd, cc = rep["cost"]["dense"], rep["cost"]["compressed"]
    lines += [
        "",
        "## Sparsity and crossbars",
        "",
        f"- weight sparsity: {_pct(s['weight'])} %",
        f"- group sparsity ({s['group_kind']}): {_pct(s['group'])} %",
        f"- crossbars: {x['dense']} dense → {x['compressed']} needed "
        f"(saving {_pct(s['crossbar_saving'])} %)",
        "",
        "## Cost (per inference)",
        "",
        "| | area (mm²) | energy (nJ) | latency (ns) |",
        "|---|---|---|---|",
        f"| dense | {_fmt(cd, 'area_mm2')} | {_fmt(cd, 'energy_nj')} | {_fmt(cd, 'latency_ns')} |",
        f"| compressed | {_fmt(cc, 'area_mm2')} | {_fmt(cc, 'energy_nj')} | "
        f"{_fmt(cc, 'latency_ns')} |",
        "",
        "## Layers",
        "",
        "| layer | matrix | tiles dense | tiles compressed | weight sparsity (%) |",
        "|---|---|---|---|---|",
    ]
    for r in rep["layers"]:
        lines.append(
            f"| {r['name']} | {r['matrix_shape'][0]}x{r['matrix_shape'][1]} | {r['tiles_dense']} "
            f"| {r['tiles_compressed']} | {100 * r['weight_sparsity']:.1f} |"
        )
    lines += coverage_lines(rep.get("coverage"))
    t = rep["timing"]
    lines += [
        "",
        "## Timing (s)",
        "",
        " · ".join(f"{k} {v:.1f}" for k, v in t.items() if v is not None),
        *(
            [
                "",
                "Of it, run by an earlier, interrupted invocation (training epochs resumed "
                "from their checkpoints): "
                + " · ".join(f"{k} {v:.1f}" for k, v in rep["timing_resumed"].items()),
            ]
            if rep.get("timing_resumed")
            else []
        ),
        "",
        "![accuracy vs time](plots/accuracy_vs_time.png)",
        "![layer sparsity](plots/layer_sparsity.png)",
        "![tile occupancy](plots/occupancy.png)",
        "",
    ]
    return "\n".join(lines)


def coverage_lines(cov: dict | None) -> list[str]:
    """Markdown lines: the share of the weights on crossbars and every layer left digital."""
    if not cov:
        return []
    lines = [
        "",
        "## Weights on crossbars",
        "",
        f"{cov['mapped_weights']} of {cov['total_weights']} weights "
        f"({100 * cov['fraction_on_crossbars']:.1f} %) are on crossbars.",
    ]
    if cov["digital"]:
        lines += [
            "",
            "| layer that stays digital | type | weights | why |",
            "|---|---|---|---|",
        ]
        for d in cov["digital"]:
            lines.append(f"| {d['name'] or '(model)'} | {d['type']} | {d['weights']} | "
                         f"{d['reason']} |")  # fmt: skip
    return lines


def _fmt(d: dict, key: str) -> str:
    v = d.get(key)
    return "–" if v is None else f"{v:.4g}"


def write_report(run) -> dict:
    rep = build_report(run)
    out = run.dir
    pdir = ensure_dir(out / "plots")
    a = rep["accuracy"]
    series = {"compressed": list(a["compressed_nonideal"].values())}
    ideal = {"compressed": a["compressed_ideal"]}
    if a.get("dense_nonideal"):
        series = {"dense": list(a["dense_nonideal"].values()), **series}
        ideal["dense"] = a["dense_ideal"]
    plots.accuracy_vs_time(
        series,
        ideal,
        pdir / "accuracy_vs_time.png",
        title=f"{rep['model']} / {rep['method']['name']}",
    )
    plots.layer_sparsity(rep["layers"], pdir / "layer_sparsity.png")
    big = max(rep["layers"], key=lambda r: r["tiles_dense"])
    plots.occupancy_heatmap(big["occupancy"], big["name"], pdir / "occupancy.png")
    atomic_write_json(out / "report.json", rep)
    md = to_markdown(rep)
    atomic_write_text(out / "report.md", md)
    pictures = [pdir / f"{p}.png" for p in ("layer_sparsity", "occupancy")]
    pictures += sorted(
        p for p in pdir.glob("*.png") if p not in pictures and p.stem != "accuracy_vs_time"
    )
    write_html(
        out / "report.html", f"xbarprune report: {rep['name']}", **html_parts(rep, pictures, md)
    )
    return rep


def html_parts(rep: dict, pictures: list[Path], md: str = "") -> dict[str, Any]:
    """The report as plain tables and plot specs for :func:`xbarprune.report.html.write_html`:
    accuracy rows (one per model and drift time), the layer table, accuracy against time with
    its ideal levels, and the run's pictures."""
    a = rep["accuracy"]
    acc_rows, series = [], []
    for tag in ("dense", "compressed"):
        ni = a.get(f"{tag}_nonideal")
        if ni is None:
            continue
        for label, r in ni.items():
            acc_rows.append(
                {
                    "model": tag,
                    "time": label,
                    "time_s": r["time_s"],
                    "digital %": _pct_num(a[f"{tag}_ideal"]),
                    "analog ideal %": _pct_num(a[f"{tag}_analog_ideal"]),
                    "non-ideal mean %": _pct_num(r["mean"]),
                    "non-ideal std %": _pct_num(r["std"]),
                }
            )
        rows = list(ni.values())
        t = [max(r["time_s"], 1e-3) for r in rows]
        color = "C0" if tag == "dense" else "C1"
        series.append(
            Series(t, [100 * r["mean"] for r in rows], label=tag,
                   yerr=[100 * r["std"] for r in rows], tags={"model": tag, "kind": "non-ideal"},
                   style={"color": color})
        )  # fmt: skip
        if a.get(f"{tag}_ideal") is not None:
            series.append(
                Series([t[0], t[-1]], [100 * a[f"{tag}_ideal"]] * 2, label=f"{tag} ideal",
                       tags={"model": tag, "kind": "digital (ideal)"},
                       style={"color": color, "linestyle": "--", "marker": ""})
            )  # fmt: skip
    layers = [
        {
            "layer": r["name"],
            "matrix": f"{r['matrix_shape'][0]}x{r['matrix_shape'][1]}",
            "blocks": r.get("blocks", 1),
            "tiles dense": r["tiles_dense"],
            "tiles compressed": r["tiles_compressed"],
            "crossbars freed %": _pct_num(1 - r["tiles_compressed"] / r["tiles_dense"])
            if r["tiles_dense"]
            else None,
            "weight sparsity %": _pct_num(r["weight_sparsity"]),
        }
        for r in rep["layers"]
    ]
    s, x, xb = rep["sparsity"], rep["crossbars"], rep["crossbar"]
    meta = {
        "model": rep["model"],
        "dataset": f"{rep['dataset']['name']} ({rep['dataset']['test_size']} test images)",
        "method": f"{rep['method']['name']} {json.dumps(rep['method']['params'])}",
        "crossbar": f"{xb['rows']}x{xb['cols']} {xb['encoding']}",
        "non-idealities": rep["nonideal"],
        "Monte Carlo": f"{rep['evaluate']['trials']} trials, seed {rep['seeds']['evaluate']}",
        "crossbars": f"{x['dense']} dense -> {x['compressed']} "
        f"(saving {_pct(s['crossbar_saving'])} %)",
        "weight sparsity %": _pct(s["weight"]),
    }
    plots: list[Any] = [
        LinePlot(f"Accuracy against time: {rep['model']} / {rep['method']['name']}", series,
                 xlabel="time after programming (s)", ylabel="test accuracy (%)", xscale="log")
    ]  # fmt: skip
    plots += [Image(p.stem.replace("_", " "), path=p) for p in pictures if p.is_file()]
    return {
        "meta": meta,
        "tables": [Table("Accuracy", acc_rows), Table("Layers", layers)],
        "plots": plots,
        "texts": [Text("report.md", md)] if md else [],
    }


def _pct_num(x) -> float | None:
    return None if x is None else round(100 * x, 4)
