"""The crossbar-aware pruning reproduction (Liang et al. 2018; issue 10): ``kind: liang``.

Per experiment (model, dataset, crossbar): train the dense model once; for each *arm* (a
:class:`~xbarprune.compress.methods.liang.LiangParams` override: a budget, a grain, a baseline)
prune a copy of the dense model with ``liang``, fine-tune with the masks fixed, and evaluate it
ideal and through each named non-ideality model (``nonideal: {name: preset or config}``) with
``evaluate.trials`` Monte Carlo trials. The paper's robustness analysis (Fig. 12: weights
quantised to b bits, then ``w * exp(theta)``, ``theta ~ N(0, sigma)``) runs on the arms named in
``robustness.arms`` and on the dense model, through the same simulator (see
:class:`~xbarprune.experiment.evaluations.WeightRobustness`, the benchmark engine's
``weight-robustness`` plug-in). Rows go to ``<out>/summary.json`` (+ summary.md and plots); finished
arms are kept in ``<out>/work`` and skipped, so a killed run resumes.

Crossbar counts. *Compute* crossbars are the tiles of the layout that hold a non-zero weight
(after output recombination). The paper's *total* adds the crossbars for input buffering and
output reduction, which pruning cannot remove (Sec. IV-C, Fig. 9(b)); their number comes from
SemiMap's compiler, which is not public. Our model (a choice, documented in
docs/methods/liang.md): per mapped layer, one buffer crossbar per input group (row band) and,
when the layer has more than one row band, one reduce crossbar per output column band of the
dense layout; both fixed by the dense layout.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

from xbarprune.compress.methods.liang import LiangParams, run_liang
from xbarprune.config import from_dict, to_dict
from xbarprune.errors import ConfigError
from xbarprune.experiment.config import DataConfig, EvaluateConfig, ModelConfig
from xbarprune.experiment.evaluations import (
    EvalContext,
    WeightRobustness,
    WeightRobustnessParams,
)
from xbarprune.experiment.studies import header, study
from xbarprune.experiment.studykit import (
    Bench,
    apply_quick,
    arm_overrides,
    check_keys,
    mean_std,
    measure_all,
    named_nonideal,
    named_rows,
    percent,
    save_figure,
    section,
    select_best,
    select_device,
    set_threads,
)
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.io import atomic_write_json, atomic_write_text, ensure_dir
from xbarprune.mapping.layout import CrossbarLayout, map_model
from xbarprune.training.loop import TrainConfig, evaluate_accuracy

_KEYS = {
    "name",
    "out",
    "seed",
    "experiments",
    "train",
    "finetune",
    "device",
    "nonideal",
    "evaluate",
    "params",
    "arms",
    "robustness",
    "quick",
    "runtime",
}

# Paper Table III / Fig. 11 (compute crossbars dense -> optimized; total dense -> optimized)
PAPER = [
    ("VGG-8", "CIFAR-10", 1954, 546, 2484, 1056),
    ("VGG-16", "ImageNet", 21720, 8724, 25801, 12749),
    ("ResNet-18", "ImageNet", 4724, 2634, 7300, 5107),
]


def peripheral_crossbars(layout: CrossbarLayout) -> int:
    """Input-buffer + output-reduce crossbars (our model of the paper's non-prunable part)."""
    total = 0
    for lay in layout:
        R, C = lay.matrix_shape
        bands, col_bands = lay.crossbar.tile_grid(R, C)
        total += bands + (col_bands if bands > 1 else 0)
    return total


def _method_label(p: LiangParams) -> str:
    if p.selection == "magnitude":
        return "magnitude+refit" if p.refit else "group-magnitude"
    return "liang" if p.projection == "rpp" else "liang-deterministic"


@study("liang")
def liang_study(data: dict, *, out: str | None, quick: bool, command: str, t0: float) -> dict:
    check_keys(data, _KEYS, "liang")
    if quick:
        data = apply_quick(data)
        q = data.pop("_quick")
        if "arms" in q:
            data["arms"] = {k: v for k, v in data["arms"].items() if k in q["arms"]}
        if "robustness" in q:
            data["robustness"] = {**(data.get("robustness") or {}), **q["robustness"]}
        if q:
            left = sorted(set(q) - {"arms", "robustness"})
            if left:
                raise ConfigError(f"unknown key(s) in liang quick: {', '.join(left)}")
    out_dir = ensure_dir(out or data.get("out", "results/liang"))
    work = ensure_dir(out_dir / "work")
    seed = int(data.get("seed", 0))
    train_cfg = section(data, "train", TrainConfig)
    ft_cfg = section(data, "finetune", TrainConfig, TrainConfig(epochs=1))
    dev = section(data, "device", DeviceSpec)
    ev = section(data, "evaluate", EvaluateConfig)
    ni_raw, nis = named_nonideal(data, {"pcm": "pcm"}, "liang")
    common, arms = arm_overrides(data, LiangParams, {"optimized": {}})
    rob = dict(data.get("robustness") or {})
    unknown = sorted(set(rob) - {"arms", "bits", "sigma", "trials"})
    if unknown:
        raise ConfigError(f"unknown key(s) in robustness: {', '.join(unknown)}")
    if quick:
        rob["arms"] = [a for a in rob.get("arms", []) if a in arms]
    missing = [a for a in rob.get("arms", []) if a not in arms]
    if missing:
        raise ConfigError(f"robustness.arms: {', '.join(map(repr, missing))} not among the arms")
    set_threads(data)
    device = select_device()
    exps = data.get("experiments") or [{"model": {"name": "lenet5"}, "data": {}}]
    rows: list[dict] = []
    rob_rows: list[dict] = []

    def flush() -> None:
        summary = header(command, t0, {"quick": quick, "trials": ev.trials})
        # compute time of every arm, including arms reused from an interrupted invocation
        summary["arm_seconds_total"] = round(
            sum(
                {
                    (r["model"], r["dataset"], r["arm"]): r.get("arm_seconds", 0) for r in rows
                }.values()
            )
            + sum({(r["model"], r["arm"]): r.get("arm_seconds", 0) for r in rob_rows}.values()),
            1,
        )
        summary["config"] = {
            "device": to_dict(dev),
            "nonideal": ni_raw,
            "evaluate": to_dict(ev),
            "train": to_dict(train_cfg),
            "finetune": to_dict(ft_cfg),
            "params": common,
            "arms": arms,
            "robustness": rob,
            "seed": seed,
        }
        summary["rows"] = rows
        summary["robustness"] = rob_rows
        summary["selection_split"] = "val"
        summary["selections"] = selections(rows)
        summary["layer_ratios"] = layer_ratio_table(rows)
        atomic_write_json(out_dir / "summary.json", summary)
        atomic_write_text(out_dir / "summary.md", markdown(summary))
        plot_saving(rows, out_dir / "accuracy_vs_saving.png")
        plot_robustness(rob_rows, out_dir / "robustness.png")

    for i, e in enumerate(exps):
        unknown = sorted(set(e) - {"model", "data", "crossbar", "params", "nonideal"})
        if unknown:
            raise ConfigError(f"unknown key(s) in experiments[{i}]: {', '.join(unknown)}")
        mc = from_dict(ModelConfig, e.get("model") or {}, f"experiments[{i}].model")
        dc = from_dict(DataConfig, e.get("data") or {}, f"experiments[{i}].data")
        xbar = from_dict(CrossbarSpec, e.get("crossbar") or {}, f"experiments[{i}].crossbar")
        exp_params = {**common, **(e.get("params") or {})}
        # experiments[].nonideal: a subset of the named models (e.g. leave out a slow one)
        names = e.get("nonideal", list(nis))
        bad = [n for n in names if n not in nis]
        if bad:
            raise ConfigError(f"experiments[{i}].nonideal: unknown name(s) {bad}; have {list(nis)}")
        exp_nis = {n: nis[n] for n in names}
        r, rr = _experiment(
            mc, dc, xbar, seed, train_cfg, ft_cfg, dev, exp_nis, ev, exp_params, arms, rob,
            work / f"{mc.name}_{dc.name}_{xbar.rows}x{xbar.cols}", device,
        )  # fmt: skip
        rows += r
        rob_rows += rr
        flush()
    flush()
    return json.loads((out_dir / "summary.json").read_text())


def _experiment(
    mc, dc, xbar, seed, train_cfg, ft_cfg, dev, nis, ev, common, arms, rob, work: Path, device
) -> tuple[list[dict], list[dict]]:
    bench = Bench.open(mc, dc, seed, work, device)
    dense = bench.dense(train_cfg)
    layout = map_model(dense, xbar)
    acc_dense = evaluate_accuracy(dense, bench.test, device)
    acc_dense_val = bench.val_accuracy(dense)  # what "best" rows are selected against
    periph = peripheral_crossbars(layout)
    xb = f"{xbar.rows}x{xbar.cols}"

    def record(model, lay: CrossbarLayout, extra: dict) -> dict:
        rec = measure_all(bench, model, lay, dev, nis, ev, reference=layout, extra=extra)
        base, nonideal = rec["base"], rec["nonideal"]
        total_dense = layout.dense_tiles + periph
        total = base["crossbars"] + periph
        base.update(
            crossbar=xb,
            crossbars_compressed=base["crossbars"],
            crossbars_total_dense=total_dense,
            crossbars_total=total,
            total_crossbar_saving=1 - total / total_dense,
            acc_dense=acc_dense,
            acc_dense_val=acc_dense_val,
        )
        return {"base": base, "nonideal": nonideal}

    recs: dict[str, dict] = {}
    recs["dense"] = bench.arm(
        "dense",
        lambda: record(
            dense, layout, {"arm": "dense", "method": "dense", "grain": "-", "reorder": False}
        ),
    )
    for key, override in arms.items():
        p = from_dict(LiangParams, {**common, **(override or {})}, f"arms.{key}")

        def build(key=key, p=p) -> dict:
            t = time.perf_counter()
            m = copy.deepcopy(dense)
            res = run_liang(bench.context(m, layout, dev, ft_cfg), p)
            acc_pruned = evaluate_accuracy(m, bench.test, device)
            bench.finetune(m, res.masks, ft_cfg)
            bench.save(m, work / f"model_{key}.pt")
            assert res.layout is not None  # run_liang always returns its packed layout
            atomic_write_json(work / f"layout_{key}.json", res.layout.to_dict())
            layers = res.info["layers"]
            extra = {
                "arm": key,
                "method": _method_label(p),
                "grain": p.grain,
                "reorder": p.reorder,
                "budget": "optimized" if p.ratio is None else p.ratio,
                "acc_before_finetune": acc_pruned,
                "layer_ratios": {n: v["ratio"] for n, v in layers.items()},
                "layer_search": layer_search(layers),
                "selection_split": "val",  # the ratio sweeps read the validation split
                "layer_crossbars": {n: [v["tiles_dense"], v["tiles"]] for n, v in layers.items()},
                "compress_seconds": round(time.perf_counter() - t, 1),
            }
            return record(m, res.layout, extra)

        recs[key] = bench.arm(key, build, config=p)

    rows = [r for rec in recs.values() for r in named_rows(rec, list(nis))]
    rob_rows: list[dict] = []
    if rob:
        rob_ev = EvaluateConfig(
            times=(ev.times[0],), trials=int(rob.get("trials", ev.trials)), seed=ev.seed
        )
        for key in ["dense", *rob.get("arms", [])]:

            def build_rob(key=key) -> dict:
                if key == "dense":
                    m, lay = dense, layout
                else:
                    m = bench.load(work / f"model_{key}.pt")
                    lay = CrossbarLayout.from_dict(
                        json.loads((work / f"layout_{key}.json").read_text())
                    )
                # the engine's `weight-robustness` plug-in: one implementation of Fig. 12
                ctx = EvalContext(m, lay, dev, bench.test, trials=rob_ev.trials, seed=rob_ev.seed,
                                  times_s=tuple(rob_ev.times_s),
                                  torch_device=bench.device)  # fmt: skip
                grid = WeightRobustnessParams(
                    bits=tuple(int(b) for b in rob.get("bits", [3, 4, 5, 8])),
                    sigma=tuple(float(x) for x in rob.get("sigma", [0.0, 0.05, 0.1, 0.2, 0.3])),
                )
                out = [
                    {"bits": p["bits"], "sigma": p["sigma"],
                     "mean": statistics.fmean(p["per_trial"]),
                     "std": statistics.stdev(p["per_trial"]) if len(p["per_trial"]) > 1 else 0.0}
                    for p in WeightRobustness().measure(ctx, grid)
                ]  # fmt: skip
                return {"base": {"arm": key}, "points": out}

            rec = bench.arm(f"robustness_{key}", build_rob)
            for pt in rec["points"]:
                rob_rows.append(
                    {
                        "model": mc.name,
                        "dataset": bench.splits.name,
                        "crossbar": xb,
                        "arm": key,
                        "crossbar_saving": recs[key]["base"]["crossbar_saving"],
                        "acc_ideal": recs[key]["base"]["acc_ideal"],
                        "bits": pt["bits"],
                        "sigma": pt["sigma"],
                        "acc_mean": pt["mean"],
                        "acc_std": pt["std"],
                        "trials": rob_ev.trials,
                        "arm_seconds": rec["base"].get("arm_seconds", 0),
                    }
                )
    return rows, rob_rows


# ------------------------------------------------------------------------------ report


def _arms(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(model, dataset, crossbar, arm) -> {nonideal name: row}, in row order."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["model"], r["dataset"], r["crossbar"], r["arm"]), {})[
            str(r.get("nonideal"))
        ] = r
    return out


def markdown(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    names = list(summary["config"]["nonideal"])
    arms = _arms(rows)
    lines = [
        "# Crossbar-aware pruning (Liang et al. 2018) — reproduction",
        "",
        f"Command: `{summary['command']}`  ",
        f"Wall time: {summary['wall_time_s']:.0f} s ({summary['machine']}); compute time of "
        f"all arms, including arms reused from earlier interrupted invocations: "
        f"{summary.get('arm_seconds_total', 0):.0f} s (+ dense training)  ",
        f"Non-ideal columns: {summary['trials']} Monte Carlo trials each "
        + ", ".join(f"`{n}` = {summary['config']['nonideal'][n]}" for n in names)
        + f", read at {summary['config']['evaluate']['times'][0]} after programming.",
        "",
        "Crossbar saving = compute crossbars freed / compute crossbars of the dense layout "
        "(whole network, first and last layer included); total adds our model of the "
        "input-buffer and output-reduce crossbars (see docs/methods/liang.md).",
        "",
        "| model | dataset | crossbar | arm | method | grain | reorder | budget | "
        "compute crossbars | saving % | total saving % | acc dense % | acc ideal % | "
        + " | ".join(f"{n} %" for n in names)
        + " |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(names),
    ]
    for (mo, ds, xb, arm), by in arms.items():
        r = next(iter(by.values()))
        budget = r.get("budget", "-")
        budget = f"{budget:.2f}" if isinstance(budget, float) else budget
        cells = " | ".join(mean_std(by[n]) if n in by else "–" for n in names)
        lines.append(
            f"| {mo} | {ds} | {xb} | {arm} | {r['method']} | {r['grain']} | "
            f"{'yes' if r['reorder'] else 'no'} | {budget} | {r['crossbars_dense']} → "
            f"{r['crossbars_compressed']} | {percent(r['crossbar_saving'], 1)} | "
            f"{percent(r['total_crossbar_saving'], 1)} | {percent(r['acc_dense'])} | "
            f"{percent(r['acc_ideal'])} | {cells} |"
        )
    lines += ["", "![ideal accuracy against crossbar saving](accuracy_vs_saving.png)", ""]
    lines += _targets(arms)
    lines += _layer_md(summary.get("layer_ratios") or layer_ratio_table(rows))
    lines += [
        "## The paper (Table III, Fig. 11; CIFAR-10 / ImageNet, 60 / 30 fine-tuning epochs)",
        "",
        "| network | dataset | compute crossbars | saving % | total crossbars | total saving % |",
        "|---|---|---|---|---|---|",
    ]
    for net, ds, cd, cc, td, tc in PAPER:
        lines.append(
            f"| {net} | {ds} | {cd} → {cc} | {100 * (1 - cc / cd):.1f} | {td} → {tc} | "
            f"{100 * (1 - tc / td):.1f} |"
        )
    lines += [
        "",
        "Accuracy drops 0.97–4.16 % (Fig. 11a; assignment to network and case not recoverable).",
        "",
    ]
    lines += _robustness_md(summary.get("robustness") or [])
    return "\n".join(lines)


def _targets(arms: dict[tuple, dict[str, dict]]) -> list[str]:
    """Issue 10's targets, checked on the rows."""
    out = ["## Targets", ""]
    exps = sorted({k[:3] for k in arms})
    for mo, ds, xb in exps:
        cands = [
            next(iter(v.values()))
            for k, v in arms.items()
            if k[:3] == (mo, ds, xb) and k[3] != "dense"
        ]
        best = best_arm(cands)
        if best is None:
            out.append(
                f"- {mo} / {ds} ({xb}): **not met** (no LGD+RPP arm at ≥ 44 % saving and "
                "≤ 2 pp *validation* loss)"
            )
        else:
            loss = best["acc_dense"] - best["acc_ideal"]
            out.append(
                f"- {mo} / {ds} ({xb}): **{'met' if loss <= 0.02 else 'not met'}** — arm "
                f"`{best['arm']}` (chosen on the validation split: "
                f"{100 * (best['acc_dense_val'] - best['acc_val']):+.2f} pp) saves "
                f"{percent(best['crossbar_saving'], 1)} % of compute crossbars at "
                f"{100 * loss:+.2f} pp ideal test accuracy loss (target ≥ 44 % at ≤ 2 pp)."
            )
        by_budget: dict[Any, dict[str, dict]] = {}
        for r in cands:
            if r["grain"] == "column" and not (r["method"] == "liang" and not r["reorder"]):
                by_budget.setdefault(r["budget"], {})[r["method"]] = r
        for b, ms in by_budget.items():
            if "liang" in ms and "group-magnitude" in ms:
                a, g = ms["liang"], ms["group-magnitude"]
                out.append(
                    f"  - budget {b}: LGD+RPP {percent(a['acc_ideal'])} % at "
                    f"{percent(a['crossbar_saving'], 1)} % saving vs group-magnitude "
                    f"{percent(g['acc_ideal'])} % at {percent(g['crossbar_saving'], 1)} % "
                    f"({'LGD+RPP at least as accurate' if a['acc_ideal'] >= g['acc_ideal'] else 'group-magnitude more accurate'})"  # noqa: E501
                )
    out.append("")
    return out


def best_arm(rows: list[dict], min_saving: float = 0.44, max_loss: float = 0.02) -> dict | None:
    """Issue 10's "best" LGD+RPP row of one experiment: the largest compute-crossbar saving
    among ``liang`` rows with saving >= 44 % and at most 2 pp ideal accuracy loss, the loss
    measured on the **validation** split (``acc_dense_val - acc_val``; issue #21). The test
    accuracy of the chosen row is reported, never used to choose it (:func:`select_best`)."""
    return select_best(
        rows,
        feasible=lambda r: (
            r["method"] == "liang"
            and r["crossbar_saving"] >= min_saving
            and r.get("acc_dense_val") is not None
            and r["acc_dense_val"] - r["acc_val"] <= max_loss
        ),
        objective=lambda r: r["crossbar_saving"],
    )


def selections(rows: list[dict]) -> list[dict]:
    """Every selection of the study, with the split it read (summary.json ``selections``)."""
    arms = _arms(rows)
    out = []
    for mo, ds, xb in sorted({k[:3] for k in arms}):
        cands = [
            next(iter(v.values()))
            for k, v in arms.items()
            if k[:3] == (mo, ds, xb) and k[3] != "dense"
        ]
        best = best_arm(cands)
        out.append(
            {
                "model": mo,
                "dataset": ds,
                "crossbar": xb,
                "what": "best LGD+RPP arm (>= 44 % saving, <= 2 pp loss)",
                "choice": best["arm"] if best else None,
                "selection_split": "val",
            }
        )
        for r in cands:
            if r.get("layer_search"):
                out.append(
                    {
                        "model": mo,
                        "dataset": ds,
                        "crossbar": xb,
                        "what": f"per-layer ratios of arm {r['arm']} (Sec. III-E sweeps)",
                        "choice": r["layer_ratios"],
                        "selection_split": r.get("selection_split", "val"),
                    }
                )
    return out


def layer_search(layers: dict[str, dict]) -> dict[str, dict]:
    """Per layer of a ``liang`` result: the Sec. III-E search (None for fixed ratios)."""
    out = {}
    for n, v in layers.items():
        if "final_ratio" not in v:
            continue
        final = [c for c in v.get("raise_path") or v.get("sweep") or [] if c["ratio"] == v["ratio"]]
        out[n] = {
            "initial_ratio": v["initial_ratio"],
            "ratio": v["ratio"],
            "stop": v["stop"],
            "val_drop": final[-1]["drop"] if final else None,
            "sweep": {f"{c['ratio']:g}": c["drop"] for c in v.get("sweep") or []},
        }
    return out


def layer_ratio_table(rows: list[dict]) -> list[dict]:
    """One entry per (experiment, arm with a ratio search, layer): the searched ratio, why the
    search stopped and the layer's validation drop there (summary.json ``layer_ratios``)."""
    out = []
    for (mo, ds, xb, arm), by in _arms(rows).items():
        r = next(iter(by.values()))
        for n, v in (r.get("layer_search") or {}).items():
            out.append(
                {
                    "model": mo,
                    "dataset": ds,
                    "crossbar": xb,
                    "arm": arm,
                    "layer": n,
                    "initial_ratio": v["initial_ratio"],
                    "ratio": v["ratio"],
                    "stop": v["stop"],
                    "val_drop": v["val_drop"],
                    "crossbars": r["layer_crossbars"].get(n),
                    "selection_split": r.get("selection_split", "val"),
                }
            )
    return out


def _layer_md(table: list[dict]) -> list[str]:
    if not table:
        return []
    out = [
        "## Per-layer ratios of the Sec. III-E search (validation sensitivities)",
        "",
        "| model | arm | layer | initial ratio | final ratio | stopped on | validation drop "
        "at the final ratio (pp) | crossbars dense → pruned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        drop = "–" if t["val_drop"] is None else f"{100 * t['val_drop']:+.2f}"
        xb = t["crossbars"]
        out.append(
            f"| {t['model']} | {t['arm']} | {t['layer']} | {t['initial_ratio']:.2f} | "
            f"{t['ratio']:.2f} | {'/'.join(t['stop'])} | {drop} | "
            f"{'–' if not xb else f'{xb[0]} → {xb[1]}'} |"
        )
    out.append("")
    return out


def _robustness_md(rob: list[dict]) -> list[str]:
    if not rob:
        return []
    out = [
        "## Robustness (paper Fig. 12: b-bit weights, then w·exp(θ), θ ~ N(0, σ))",
        "",
    ]
    sigmas = sorted({r["sigma"] for r in rob})
    out += [
        "| model | dataset | arm | saving % | bits | " + " | ".join(f"σ={s:g}" for s in sigmas)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(sigmas),
    ]  # fmt: skip
    by: dict[tuple, dict[float, dict]] = {}
    for r in rob:
        by.setdefault((r["model"], r["dataset"], r["arm"], r["bits"]), {})[r["sigma"]] = r
    for (mo, ds, arm, bits), pts in by.items():
        r0 = next(iter(pts.values()))
        cells = " | ".join(
            f"{100 * pts[s]['acc_mean']:.2f} ± {100 * pts[s]['acc_std']:.2f}" if s in pts else "–"
            for s in sigmas
        )
        out.append(
            f"| {mo} | {ds} | {arm} | {percent(r0['crossbar_saving'], 1)} | {bits} | {cells} |"
        )
    out += ["", "![robustness](robustness.png)", ""]
    return out


def plot_saving(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = _arms(rows)
    exps = sorted({k[:3] for k in arms})
    fig, axes = plt.subplots(1, len(exps), figsize=(5.5 * len(exps), 4), squeeze=False)
    markers = {"liang": "o", "liang-deterministic": "s", "magnitude+refit": "^"}
    for ax, exp in zip(axes[0], exps, strict=True):
        pts: dict[str, list[tuple[float, float]]] = {}
        for k, by in arms.items():
            if k[:3] != exp:
                continue
            r = next(iter(by.values()))
            label = r["method"] + ("" if r["grain"] in ("-", "column") else f" ({r['grain']})")
            if r["method"] != "dense" and not r["reorder"]:
                label += " no-reorder"
            pts.setdefault(label, []).append((100 * r["crossbar_saving"], 100 * r["acc_ideal"]))
        for label, xy in pts.items():
            xy.sort()
            ax.plot(
                [a for a, _ in xy],
                [b for _, b in xy],
                marker=markers.get(label, "x"),
                linestyle="-" if len(xy) > 1 else "none",
                label=label,
            )
        ax.set_xlabel("compute-crossbar saving (%)")
        ax.set_ylabel("ideal test accuracy (%)")
        ax.set_title(f"{exp[0]} / {exp[1]} ({exp[2]})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_robustness(rob: list[dict], path: Path) -> None:
    if not rob:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = sorted({(r["model"], r["dataset"]) for r in rob})
    fig, axes = plt.subplots(1, len(exps), figsize=(5.5 * len(exps), 4), squeeze=False)
    for ax, (mo, ds) in zip(axes[0], exps, strict=True):
        series: dict[tuple, list[dict]] = {}
        for r in rob:
            if (r["model"], r["dataset"]) == (mo, ds):
                series.setdefault((r["arm"], r["bits"]), []).append(r)
        for (arm, bits), pts in series.items():
            pts.sort(key=lambda r: r["sigma"])
            ax.errorbar(
                [r["sigma"] for r in pts],
                [100 * r["acc_mean"] for r in pts],
                yerr=[100 * r["acc_std"] for r in pts],
                marker="o" if arm == "dense" else "s",
                linestyle="-" if arm == "dense" else "--",
                capsize=2,
                label=f"{arm}, {bits} bit",
            )
        ax.set_xlabel("σ of θ (w·exp(θ))")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{mo} / {ds}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path)
