"""The PRUNIX comparison (issue: "PRUNIX ... the non-ideality-aware comparison").

For each (model, dataset): train the dense model once; for each regulariser train once from the
dense model (``reg_epochs``); for each pruner prune that model to the same target sparsity on the
same crossbar groups with the same schedule (rounds, fine-tuning), fine-tune with masks fixed,
then evaluate it ideal and through the configured non-idealities (``nonideal: prunix``) at each
drift time with ``trials`` Monte Carlo trials.

The last fine-tune (after the pruner's own rounds) runs without any regulariser by default
(``final_regularizer: false``, the design of the published results); ``final_regularizer:
true`` keeps each arm's own regulariser through it, so the group sawtooth's weights stay on the
programmed levels up to programming (issue #21 item 8). Each arm records the sawtooth's
on-level fraction before and after that fine-tune (``on_level_before_final`` /
``on_level_after_final``, on the simulator's grid). Rows go to ``<out>/summary.json`` (+ summary.md
and a plot). Arms already finished (``<out>/work/.../*.json``) are skipped, so a killed run
resumes.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from xbarprune.compress.methods.prunix import (
    PrunixParams,
    build_regularizer,
    run_prunix,
    sawtooth_grid,
)
from xbarprune.compress.parts.sawtooth import on_level_fraction
from xbarprune.config import from_dict, to_dict
from xbarprune.errors import ConfigError
from xbarprune.experiment.config import DataConfig, EvaluateConfig, ModelConfig
from xbarprune.experiment.studies import header, study
from xbarprune.experiment.studykit import (
    Bench,
    apply_quick,
    check_keys,
    expand,
    mean_std,
    nonideal_model,
    save_figure,
    section,
    select_best,
    select_device,
    set_threads,
)
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.io import atomic_write_json, atomic_write_text, ensure_dir
from xbarprune.mapping.layout import map_model
from xbarprune.mapping.permute import pack_layout
from xbarprune.training.loop import TrainConfig, train
from xbarprune.units import format_time

_QUICK_PARAMS = ("reg_epochs", "rounds", "ft_epochs", "sens_samples", "sens_trials", "grid")
_KEYS = {
    "name",
    "out",
    "seed",
    "experiments",
    "train",
    "finetune",
    "crossbar",
    "device",
    "nonideal",
    "evaluate",
    "regularizers",
    "pruners",
    "final_regularizer",
    "params",
    "quick",
    "runtime",
}


@study("prunix")
def prunix_study(data: dict, *, out: str | None, quick: bool, command: str, t0: float) -> dict:
    check_keys(data, _KEYS, "prunix")
    if quick:
        data = apply_quick(data, param_keys=_QUICK_PARAMS)
        q = data.pop("_quick")
        if "regularizers" in q:
            data["regularizers"] = {
                k: v for k, v in data["regularizers"].items() if k in q["regularizers"]
            }
        if "pruners" in q:
            data["pruners"] = q["pruners"]
    out_dir = ensure_dir(out or data.get("out", "results/prunix"))
    work = ensure_dir(out_dir / "work")
    seed = int(data.get("seed", 0))
    train_cfg = section(data, "train", TrainConfig)
    ft_cfg = section(data, "finetune", TrainConfig, TrainConfig(epochs=1))
    xbar = section(data, "crossbar", CrossbarSpec)
    dev = section(data, "device", DeviceSpec)
    ev = section(data, "evaluate", EvaluateConfig)
    ni_raw = data.get("nonideal", "prunix")
    ni = nonideal_model(ni_raw)
    regs: dict[str, dict] = data.get("regularizers") or {"none": {}, "group_sawtooth": {}}
    pruners: list[str] = list(data.get("pruners") or ["apa", "uniform"])
    common = dict(data.get("params") or {})
    final_reg = data.get("final_regularizer", False)
    if not isinstance(final_reg, bool):
        raise ConfigError(f"prunix: final_regularizer = {final_reg!r}; allowed: true, false")
    device = select_device()
    set_threads(data)
    exps = data.get("experiments") or [{"model": {"name": "lenet5"}, "data": {}}]
    rows: list[dict] = []

    def flush(extra: dict | None = None) -> None:
        summary = header(
            command,
            t0,
            {"quick": quick, "trials": ev.trials, "times_s": ev.times_s, **(extra or {})},
        )
        summary["config"] = {
            "crossbar": to_dict(xbar),
            "device": to_dict(dev),
            "nonideal": ni_raw,
            "train": to_dict(train_cfg),
            "finetune": to_dict(ft_cfg),
            "params": common,
            "regularizers": regs,
            "pruners": pruners,
            "final_regularizer": final_reg,
            "seed": seed,
        }
        summary["rows"] = rows
        summary["selection_split"] = "val"
        summary["selections"] = selections(rows)
        atomic_write_json(out_dir / "summary.json", summary)
        atomic_write_text(out_dir / "summary.md", _markdown(summary))
        _plot(rows, out_dir / "accuracy.png")

    for e in exps:
        mc = from_dict(ModelConfig, e.get("model") or {}, "experiments[].model")
        dc = from_dict(DataConfig, e.get("data") or {}, "experiments[].data")
        rows += _one_experiment(
            mc,
            dc,
            seed,
            train_cfg,
            ft_cfg,
            xbar,
            dev,
            ni,
            ev,
            regs,
            pruners,
            common,
            work / f"{mc.name}_{dc.name}",
            device,
            final_reg,
        )
        flush()
    flush()
    return json.loads((out_dir / "summary.json").read_text())


def _one_experiment(
    mc,
    dc,
    seed,
    train_cfg,
    ft_cfg,
    xbar,
    dev,
    ni,
    ev,
    regs,
    pruners,
    common,
    work: Path,
    device,
    final_reg: bool = False,
) -> list[dict]:
    bench = Bench.open(mc, dc, seed, work, device)
    dense = bench.dense(train_cfg)
    layout = map_model(dense, xbar)
    rows: list[dict] = []

    def measure(model, reg: str, pruner: str, extra: dict, lay=None) -> dict:
        rec = bench.measure(model, lay or layout, dev, ni, ev, reference=layout, extra=extra)
        rec["base"] = {**rec["base"], "regularizer": reg, "pruner": pruner}
        return rec

    rows += expand(bench.arm("dense", lambda: measure(dense, "none", "none (dense)", {})))

    base_params = {k: v for k, v in common.items() if k not in ("regularizer", "pruner")}
    for reg, rp in regs.items():
        params = from_dict(
            PrunixParams, {**base_params, **(rp or {}), "regularizer": reg}, "params"
        )
        reg_path = work / f"reg_{reg}.pt"
        if not reg_path.is_file():
            bench.log(f"[{bench.tag}] regulariser {reg} (lam={params.lam})")
            m = copy.deepcopy(dense)
            r = build_regularizer(params, bench.context(m, layout, dev, ft_cfg, ni))
            if r is not None and params.reg_epochs > 0:
                train(
                    m,
                    bench.splits.train,
                    ft_cfg,
                    device=device,
                    regularizer=r,
                    seed=seed + 3,
                    checkpoint=work / f"reg_{reg}_ckpt.pt",
                    desc=f"reg {reg}",
                    epochs=params.reg_epochs,
                    log=bench.log,
                )
            bench.save(m, reg_path)
        for pruner in pruners:

            def build(reg=reg, pruner=pruner, params=params, reg_path=reg_path) -> dict:
                t = time.perf_counter()
                m = bench.load(reg_path)
                p = replace(params, pruner=pruner, reg_epochs=0)
                ctx = bench.context(m, layout, dev, ft_cfg, ni)
                res = run_prunix(ctx, p)
                n_levels, units = sawtooth_grid(ctx)
                on_before = on_level_fraction(m, layout, n_levels, units=units)
                # by default the final fine-tune runs without the regulariser, for all arms;
                # final_regularizer: true keeps each arm's own (issue #21 item 8)
                final = build_regularizer(p, ctx) if final_reg else None
                bench.finetune(m, res.masks, ft_cfg, regularizer=final)
                extra = {
                    "final_regularizer": final_reg,
                    "on_level_before_final": on_before,
                    "on_level_after_final": on_level_fraction(m, layout, n_levels, units=units),
                    "compress_seconds": round(time.perf_counter() - t, 1),
                    "lam": params.lam,
                    "allocation": res.info["rounds"][-1].get("allocation", {}).get("sparsity")
                    if pruner == "apa"
                    else None,
                }
                packed = pack_layout(layout, m, p.kind) if p.pack else layout
                return measure(m, reg, pruner, extra, packed)

            # the default keeps the fingerprint of arms stored before final_regularizer existed
            cfg = [params, pruner] + ([{"final_regularizer": True}] if final_reg else [])
            rows += expand(bench.arm(f"{reg}_{pruner}", build, config=cfg))
    return rows


def _markdown(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    times = sorted({r["drift_time_s"] for r in rows})
    lines = [
        "# PRUNIX comparison",
        "",
        f"Command: `{summary['command']}`  ",
        f"Wall time: {summary['wall_time_s']:.0f} s ({summary['machine']})  ",
        f"Non-idealities: `{summary['config']['nonideal']}`, {summary['trials']} Monte Carlo "
        f"trials per point; crossbar {summary['config']['crossbar']['rows']}x"
        f"{summary['config']['crossbar']['cols']}",
        "",
        "| model | dataset | regularizer | pruner | weight sparsity % | crossbar saving % | "
        "ideal % | " + " | ".join(f"non-ideal @ {format_time(t)} %" for t in times) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(times),
    ]
    seen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["model"], r["dataset"], r["regularizer"], r["pruner"])
        seen.setdefault(key, {"r": r, "t": {}})["t"][r["drift_time_s"]] = r
    for (mo, ds, reg, pr), v in seen.items():
        r = v["r"]
        cells = " | ".join(mean_std(v["t"][t]) if t in v["t"] else "–" for t in times)
        lines.append(
            f"| {mo} | {ds} | {reg} | {pr} | {100 * r['sparsity_weight']:.1f} | "
            f"{100 * r['crossbar_saving']:.1f} | {100 * r['acc_ideal']:.2f} | {cells} |"
        )
    lines += ["", "![non-ideal accuracy per arm](accuracy.png)", ""]
    lines += _headline(rows, times)
    return "\n".join(lines)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of per-trial differences a_i - b_i.

    Arms of one model share the Monte Carlo devices of trial i (same seed, same cell-tensor
    shape, so the same random draws), so the per-trial difference is a paired comparison.
    """
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    m = sum(d) / n
    if n < 2:
        return m, 0.0
    sd = (sum((x - m) ** 2 for x in d) / (n - 1)) ** 0.5
    return m, sd / n**0.5


def best_other_arm(by: dict, mo: str, ds: str, others: list[tuple], last: float) -> tuple | None:
    """The strongest competitor PRUNIX is compared against: the (regularizer, pruner) arm of
    highest ideal **validation** accuracy (issue #21: it was the highest non-ideal *test*
    accuracy before; selection never reads the test split)."""
    # (mo, ds) + o + (last,), not by[(mo, ds, *o, last)]: mypy misreads a starred tuple in
    # brackets as 3.11 syntax
    rows = [{**by[(mo, ds) + o + (last,)], "_arm": o} for o in others if (mo, ds, *o, last) in by]
    best = select_best(rows, feasible=lambda r: True, objective=lambda r: r["acc_val"])
    return best["_arm"] if best else None


def selections(rows: list[dict]) -> list[dict]:
    """The study's selections and the split each read (summary.json ``selections``)."""
    out = []
    for mo, ds in sorted({(r["model"], r["dataset"]) for r in rows}):
        apa = [r for r in rows if (r["model"], r["dataset"]) == (mo, ds) and r["pruner"] == "apa"]
        for r in {r["regularizer"]: r for r in apa}.values():
            out.append(
                {
                    "model": mo,
                    "dataset": ds,
                    "what": f"APA per-layer sparsity allocation ({r['regularizer']} + apa)",
                    "choice": r.get("allocation"),
                    "selection_split": "val",
                }
            )
        out.append(
            {
                "model": mo,
                "dataset": ds,
                "what": "best other arm of the headline table",
                "selection_split": "val",
            }
        )
    return out


def _headline(rows: list[dict], times: list[float]) -> list[str]:
    """PRUNIX (group_sawtooth + apa) against the standard arms, paired per trial."""
    out = ["## PRUNIX against the standard methods (paired per trial, mean ± s.e., pp)", ""]
    out += [
        "| model | dataset | baseline | "
        + " | ".join(f"Δ non-ideal @ {format_time(t)}" for t in times)
        + " | Δ ideal |",
        "|---|---|---|" + "---|" * (len(times) + 1),
    ]
    by = {}
    for r in rows:
        by[(r["model"], r["dataset"], r["regularizer"], r["pruner"], r["drift_time_s"])] = r
    for mo, ds in sorted({(r["model"], r["dataset"]) for r in rows}):
        key = (mo, ds, "group_sawtooth", "apa")
        if (*key, times[0]) not in by:
            continue
        others = sorted(
            {
                (r["regularizer"], r["pruner"])
                for r in rows
                if (r["model"], r["dataset"]) == (mo, ds)
                and (r["regularizer"], r["pruner"]) != ("group_sawtooth", "apa")
                and r["pruner"] != "none (dense)"
            }
        )
        last = times[-1]
        best = best_other_arm(by, mo, ds, others, last)
        standard = [("none", "uniform"), ("none", "global"), ("none", "apa")]
        for reg, pr in standard + ([best] if best else []):
            if (mo, ds, reg, pr, last) not in by:
                continue
            cells = []
            for t in times:
                a = by[key + (t,)]["acc_nonideal_trials"]
                b = by[(mo, ds, reg, pr, t)]["acc_nonideal_trials"]
                m, se = paired_difference(a, b)
                cells.append(f"{100 * m:+.1f} ± {100 * se:.1f}")
            di = 100 * (by[key + (last,)]["acc_ideal"] - by[(mo, ds, reg, pr, last)]["acc_ideal"])
            tag = " (best other arm on validation accuracy)" if (reg, pr) == best else ""
            out.append(
                f"| {mo} | {ds} | {reg} + {pr}{tag} | " + " | ".join(cells) + f" | {di:+.1f} |"
            )
    out.append("")
    return out


def _plot(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["dataset"]) for r in rows})
    times = sorted({r["drift_time_s"] for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.8), squeeze=False)
    for ax, (mo, ds) in zip(axes[0], groups, strict=True):
        arms = []
        for r in rows:
            if (r["model"], r["dataset"]) == (mo, ds):
                k = f"{r['regularizer']}+{r['pruner']}"
                if k not in arms:
                    arms.append(k)
        width = 0.8 / max(len(times), 1)
        for j, t in enumerate(times):
            vals, errs = [], []
            for k in arms:
                m = [
                    r
                    for r in rows
                    if (r["model"], r["dataset"]) == (mo, ds)
                    and f"{r['regularizer']}+{r['pruner']}" == k
                    and r["drift_time_s"] == t
                ]
                vals.append(100 * m[0]["acc_nonideal_mean"] if m else 0)
                errs.append(100 * m[0]["acc_nonideal_std"] if m else 0)
            ax.bar(
                [i + j * width for i in range(len(arms))],
                vals,
                width,
                yerr=errs,
                capsize=2,
                label=format_time(t),
            )
        ax.set_xticks(
            [i + width * (len(times) - 1) / 2 for i in range(len(arms))],
            arms,
            rotation=45,
            ha="right",
            fontsize=7,
        )
        ax.set_ylabel("non-ideal test accuracy (%)")
        ax.set_title(f"{mo} / {ds}", fontsize=9)
        ax.legend(fontsize=7, title="drift time", title_fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
