"""The PRUNIX comparison (issue: "PRUNIX ... the non-ideality-aware comparison").

For each (model, dataset): train the dense model once; for each regulariser train once from the
dense model (``reg_epochs``); for each pruner prune that model to the same target sparsity on the
same crossbar groups with the same schedule (rounds, fine-tuning), fine-tune with masks fixed,
then evaluate it ideal and through the configured non-idealities (``nonideal: prunix``) at each
drift time with ``trials`` Monte Carlo trials. Rows go to ``<out>/summary.json`` (+ summary.md
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

import torch
from torch.utils.data import DataLoader

from xbarprune.analog.simulate import evaluate
from xbarprune.compress.base import CompressContext
from xbarprune.compress.prunix import PrunixParams, build_regularizer, run_prunix
from xbarprune.config import from_dict, to_dict
from xbarprune.errors import ConfigError
from xbarprune.experiment.compare import header, study
from xbarprune.experiment.config import DataConfig, EvaluateConfig, ModelConfig
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel, preset
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.io import (
    atomic_write_json,
    atomic_write_text,
    ensure_dir,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)
from xbarprune.mapping.layout import map_model
from xbarprune.training.loop import TrainConfig, evaluate_accuracy, train
from xbarprune.training.masks import MaskSet
from xbarprune.units import format_time

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
    "params",
    "quick",
    "runtime",
}


def _section(data: dict, key: str, cls, default=None):
    return from_dict(cls, data.get(key) or {}, key) if key in data else (default or cls())


@study("prunix")
def prunix_study(data: dict, *, out: str | None, quick: bool, command: str, t0: float) -> dict:
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in the prunix comparison: {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_KEYS))}"
        )
    if quick:
        q = data.get("quick") or {}
        data = _apply_quick(data, q)
    out_dir = ensure_dir(out or data.get("out", "results/prunix"))
    work = ensure_dir(out_dir / "work")
    seed = int(data.get("seed", 0))
    train_cfg = _section(data, "train", TrainConfig)
    ft_cfg = _section(data, "finetune", TrainConfig, TrainConfig(epochs=1))
    xbar = _section(data, "crossbar", CrossbarSpec)
    dev = _section(data, "device", DeviceSpec)
    ev = _section(data, "evaluate", EvaluateConfig)
    ni_raw = data.get("nonideal", "prunix")
    ni_cfg = (
        preset(ni_raw)
        if isinstance(ni_raw, str)
        else from_dict(NonIdealityConfig, ni_raw, "nonideal")
    )
    ni = NonIdealityModel.from_config(ni_cfg)
    regs: dict[str, dict] = data.get("regularizers") or {"none": {}, "group_sawtooth": {}}
    pruners: list[str] = list(data.get("pruners") or ["apa", "uniform"])
    common = dict(data.get("params") or {})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = (data.get("runtime") or {}).get("threads")
    if threads:
        torch.set_num_threads(int(threads))
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
            "seed": seed,
        }
        summary["rows"] = rows
        atomic_write_json(out_dir / "summary.json", summary)
        atomic_write_text(out_dir / "summary.md", _markdown(summary))
        _plot(rows, out_dir / "accuracy.png")

    for e in exps:
        mc = from_dict(ModelConfig, e.get("model") or {}, "experiments[].model")
        dc = from_dict(DataConfig, e.get("data") or {}, "experiments[].data")
        if quick:
            dc = replace(dc, **{k: v for k, v in (data.get("_quick_data") or {}).items()})
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
            flush_rows=rows,
            flush=flush,
        )
        flush()
    flush()
    return json.loads((out_dir / "summary.json").read_text())


def _apply_quick(data: dict, q: dict) -> dict:
    d = copy.deepcopy(data)
    d["_quick_data"] = {k: q[k] for k in ("train_subset", "test_subset") if k in q}
    for sec in ("train", "finetune"):
        if "epochs" in q:
            d.setdefault(sec, {})["epochs"] = q["epochs"]
    d.setdefault("evaluate", {})
    if "trials" in q:
        d["evaluate"]["trials"] = q["trials"]
    if "times" in q:
        d["evaluate"]["times"] = q["times"]
    p = d.setdefault("params", {})
    for k in ("reg_epochs", "rounds", "ft_epochs", "sens_samples", "sens_trials", "grid"):
        if k in q:
            p[k] = q[k]
    if "experiments" in q:
        d["experiments"] = d["experiments"][: int(q["experiments"])]
    if "regularizers" in q:
        d["regularizers"] = {k: v for k, v in d["regularizers"].items() if k in q["regularizers"]}
    if "pruners" in q:
        d["pruners"] = q["pruners"]
    d.pop("quick", None)
    return d


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
    flush_rows,
    flush,
) -> list[dict]:
    from xbarprune.data import load_splits
    from xbarprune.models import build_model

    work = ensure_dir(work)
    splits = load_splits(
        dc.name,
        dc.root,
        val_size=dc.val,
        train_subset=dc.train_subset,
        test_subset=dc.test_subset,
        pad_to=dc.pad_to,
        seed=seed,
    )
    test = DataLoader(splits.test, batch_size=dc.batch_size_eval)

    def fresh():
        return build_model(
            mc.name,
            num_classes=splits.num_classes,
            in_channels=splits.in_channels,
            image_size=splits.image_size,
            width=mc.width,
            seed=seed,
            **mc.kwargs,
        ).to(device)

    def load(path: Path):
        m = fresh()
        load_state_into(m, load_checkpoint(path, device)["model"], str(path))
        return m

    log = print
    dense_path = work / "dense.pt"
    if not dense_path.is_file():
        log(f"[{mc.name}/{dc.name}] dense training")
        m = fresh()
        train(
            m,
            splits.train,
            train_cfg,
            device=device,
            checkpoint=work / "dense_ckpt.pt",
            seed=seed,
            desc="dense",
            log=log,
        )
        save_checkpoint(dense_path, {"model": m.state_dict()})
    dense = load(dense_path)
    layout = map_model(dense, xbar)
    rows: list[dict] = []

    def evaluate_arm(model, reg: str, pruner: str, extra: dict, lay=None) -> dict:
        lay = lay or layout
        t = time.perf_counter()
        acc = evaluate_accuracy(model, test, device)
        res = evaluate(
            model,
            test,
            lay,
            dev,
            ni,
            trials=ev.trials,
            seed=ev.seed,
            times=ev.times_s,
            device=device,
        )
        mats = {n: (dict(model.named_modules())[n].weight.detach() != 0) for n in layout.layers}
        from xbarprune.mapping.layout import layer_matrices

        lm = layer_matrices(model, lay)
        needed = sum(lay[n].tiles_needed(lm[n]) for n in lay.layers)
        nnz = sum(int(v.sum()) for v in mats.values())
        tot = sum(v.numel() for v in mats.values())
        base = {
            "model": mc.name,
            "dataset": splits.name,
            "regularizer": reg,
            "pruner": pruner,
            "sparsity_weight": 1 - nnz / tot,
            "crossbars_dense": layout.dense_tiles,
            "crossbars": needed,
            "crossbar_saving": 1 - needed / layout.dense_tiles,
            "acc_ideal": acc,
            "trials": ev.trials,
            **extra,
            "eval_seconds": round(time.perf_counter() - t, 1),
        }
        return {"base": base, "nonideal": [r.to_dict() for r in res]}

    def expand(rec: dict) -> list[dict]:
        out = []
        for r in rec["nonideal"]:
            out.append(
                {
                    **rec["base"],
                    "drift_time_s": r["time_s"],
                    "drift_time": format_time(r["time_s"]),
                    "acc_nonideal_mean": r["mean"],
                    "acc_nonideal_std": r["std"],
                    "acc_nonideal_trials": r["per_trial"],
                }
            )
        return out

    arm = work / "arm_dense.json"
    if not arm.is_file():
        atomic_write_json(arm, evaluate_arm(dense, "none", "none (dense)", {}))
    rows += expand(json.loads(arm.read_text()))
    flush_rows_snapshot = list(flush_rows) + rows
    del flush_rows_snapshot

    base_params = {k: v for k, v in common.items() if k not in ("regularizer", "pruner")}
    for reg, rp in regs.items():
        params = from_dict(
            PrunixParams, {**base_params, **(rp or {}), "regularizer": reg}, "params"
        )
        reg_path = work / f"reg_{reg}.pt"
        if not reg_path.is_file():
            log(f"[{mc.name}/{dc.name}] regulariser {reg} (lam={params.lam})")
            m = copy.deepcopy(dense)
            ctx = _ctx(m, layout, dev, splits, ft_cfg, device, seed, ni, log)
            r = build_regularizer(params, ctx)
            if r is not None and params.reg_epochs > 0:
                train(
                    m,
                    splits.train,
                    ft_cfg,
                    device=device,
                    regularizer=r,
                    seed=seed + 3,
                    checkpoint=work / f"reg_{reg}_ckpt.pt",
                    desc=f"reg {reg}",
                    epochs=params.reg_epochs,
                    log=log,
                )
            save_checkpoint(reg_path, {"model": m.state_dict()})
        for pruner in pruners:
            arm = work / f"arm_{reg}_{pruner}.json"
            if not arm.is_file():
                log(f"[{mc.name}/{dc.name}] {reg} + {pruner}")
                t = time.perf_counter()
                m = load(reg_path)
                p = replace(params, pruner=pruner, reg_epochs=0)
                ctx = _ctx(m, layout, dev, splits, ft_cfg, device, seed, ni, log)
                res = run_prunix(ctx, p)
                reg_obj = build_regularizer(params, ctx) if p.keep_regularizer else None
                del reg_obj  # the final fine-tune runs without the regulariser, for all arms
                train(
                    m,
                    splits.train,
                    ft_cfg,
                    device=device,
                    masks=res.masks,
                    seed=seed + 5,
                    desc="finetune",
                    log=log,
                )
                MaskSet(res.masks.masks).apply(m)
                extra = {
                    "compress_seconds": round(time.perf_counter() - t, 1),
                    "lam": params.lam,
                    "allocation": res.info["rounds"][-1].get("allocation", {}).get("sparsity")
                    if pruner == "apa"
                    else None,
                }
                packed = layout.packed(m, p.kind) if p.pack else layout
                rec = evaluate_arm(m, reg, pruner, extra, packed)
                atomic_write_json(arm, rec)
            rows += expand(json.loads(arm.read_text()))
    return rows


def _ctx(model, layout, dev, splits, ft_cfg, device, seed, ni, log) -> CompressContext:
    return CompressContext(
        model=model,
        layout=layout,
        device_spec=dev,
        train_data=splits.train,
        val_data=splits.val if splits.val is not None and len(splits.val) else splits.test,
        finetune_cfg=ft_cfg,
        device=device,
        seed=seed,
        run_dir=None,
        nonideal=ni,
        log=log,
    )


def _pm(row: dict) -> str:
    return f"{100 * row['acc_nonideal_mean']:.2f} ± {100 * row['acc_nonideal_std']:.2f}"


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
    seen = {}
    for r in rows:
        key = (r["model"], r["dataset"], r["regularizer"], r["pruner"])
        seen.setdefault(key, {"r": r, "t": {}})["t"][r["drift_time_s"]] = r
    for (mo, ds, reg, pr), v in seen.items():
        r = v["r"]
        cells = " | ".join(_pm(v["t"][t]) if t in v["t"] else "–" for t in times)
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
        best = max(others, key=lambda o: by[(mo, ds, *o, last)]["acc_nonideal_mean"])
        for reg, pr in [("none", "uniform"), ("none", "global"), ("none", "apa"), best]:
            if (mo, ds, reg, pr, last) not in by:
                continue
            cells = []
            for t in times:
                a = by[(*key, t)]["acc_nonideal_trials"]
                b = by[(mo, ds, reg, pr, t)]["acc_nonideal_trials"]
                m, se = paired_difference(a, b)
                cells.append(f"{100 * m:+.1f} ± {100 * se:.1f}")
            di = 100 * (by[(*key, last)]["acc_ideal"] - by[(mo, ds, reg, pr, last)]["acc_ideal"])
            tag = " (best other arm at " + format_time(last) + ")" if (reg, pr) == best else ""
            out.append(
                f"| {mo} | {ds} | {reg} + {pr}{tag} | " + " | ".join(cells) + f" | {di:+.1f} |"
            )
    out.append("")
    return out


def _plot(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xbarprune.io import atomic_write_bytes

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
