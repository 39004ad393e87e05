"""Where does the group sawtooth lose to L2 under the ``prunix`` preset? (issue #21, item 8)

On the PRUNIX study's LeNet-5 configuration (``examples/prunix_compare.yaml``, experiment 0:
LeNet-5 / Fashion-MNIST, the same splits, seeds, lambdas, schedule and 85 % target) this runs,
for each arm (regulariser + pruner; default group_sawtooth and l2, each with apa and global):

1. the study's pipeline up to the final fine-tune (regularised training from the dense model,
   ``run_prunix`` with its rounds), then the final fine-tune twice from the same pruned model:
   ``plain`` (no regulariser: the study's design) and ``kept`` (the arm's own regulariser kept,
   ``final_regularizer: true`` of the study);
2. diagnostics on the simulator's weight grid (:func:`~xbarprune.compress.methods.prunix.
   sawtooth_grid`): on-level fraction after regularisation, before and after the final
   fine-tune (``sawtooth.on_level_fraction``, tolerance 5 % of a level step), relative
   quantisation error, per-layer w_max before / after the final fine-tune (the grid's scale
   moves with it), and the share of weights above the aged top level (clipped by aging);
3. test accuracy through each ``prunix`` effect alone, with the same Monte Carlo seeds for
   every arm (so differences are paired per trial): quantisation (8 levels) at 1 s, drift +
   global compensation at 1 d and 1 y, stuck-at faults (SA0 5 %, SA1 1 %) at 1 s, aging at 1 s,
   and all of them (the ``prunix`` preset) at 1 s, 1 d, 1 y.

Writes ``<out>/grid_probe.json`` (every number) and ``<out>/grid_probe.md`` (tables: accuracy
per effect and arm, sawtooth - L2 at the same pruner and sparsity target, paired mean ± s.e.).
Finished arms are cached in ``<out>/work/`` (a killed run resumes).

    # full (estimated 15-20 min on 2 quiet CPU cores from the study's timings; data in
    # ../shared/data as for the study)
    python scripts/prunix_grid_probe.py --out results/prunix/grid_probe
    # smoke test (embedded MNIST subset, 1 epoch, tiny; under a minute)
    python scripts/prunix_grid_probe.py --quick --out /tmp/prunix_grid_probe
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from xbarprune.compress.methods.prunix import (
    PrunixParams,
    build_regularizer,
    run_prunix,
    sawtooth_grid,
)
from xbarprune.compress.parts.sawtooth import on_level_fraction, quantize_to_units, simulator_grid
from xbarprune.config import from_dict, load_yaml
from xbarprune.experiment.config import DataConfig, EvaluateConfig, ModelConfig
from xbarprune.experiment.prunix_compare import paired_difference
from xbarprune.experiment.studykit import Bench, select_device, set_threads
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel, preset
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.io import atomic_write_json, atomic_write_text, ensure_dir
from xbarprune.mapping.layout import layer_matrices, map_model
from xbarprune.mapping.permute import pack_layout
from xbarprune.training.loop import TrainConfig, train
from xbarprune.units import format_time

ROOT = Path(__file__).resolve().parents[1]


def effects(name: str) -> dict[str, tuple[NonIdealityConfig, tuple[str, ...]]]:
    """Each effect of the preset alone (with its evaluation times), and all of them."""
    p = preset(name)
    return {
        "quantization": (NonIdealityConfig(quantization=p.quantization), ("1s",)),
        "drift+comp": (
            NonIdealityConfig(drift=p.drift, drift_compensation=p.drift_compensation),
            ("1d", "1y"),
        ),
        "faults": (NonIdealityConfig(faults=p.faults), ("1s",)),
        "aging": (NonIdealityConfig(aging=p.aging), ("1s",)),
        "all": (p, ("1s", "1d", "1y")),
    }


def grid_diagnostics(model, layout, n_levels, units, aging, dev) -> dict:
    """On-level fraction, relative quantisation error and aging-clipped share (simulator grid).

    ``on_nonzero_level``: the same fraction among weights whose nearest level is not zero.
    The relative quantisation error and the clipped share are over the non-zero weights of all
    mapped layers, each layer on its own w_max (max |W|, what programming uses).
    """
    u = torch.tensor(units, dtype=torch.float64) if units is not None else None
    if u is None:
        m = n_levels - 1
        u = torch.arange(-m, m + 1, dtype=torch.float64) / m
    step = float((u[1:] - u[:-1]).min())
    top = None
    if aging is not None:
        g_lo, g_hi = aging.window(dev)
        top = (g_hi - g_lo) / dev.g_range  # aged top weight / w_max (differential)
    err2 = nrm2 = 0.0
    above = nz_tot = near_lv = on_lv = 0
    w_max = {}
    for name, mat in layer_matrices(model, layout).items():
        mat = mat.detach().double()
        wm = float(mat.abs().max()) or 1.0
        w_max[name] = wm
        nz = mat != 0
        q = quantize_to_units(mat, wm, u)
        err2 += float(((mat - q)[nz] ** 2).sum())
        nrm2 += float((mat[nz] ** 2).sum())
        nz_tot += int(nz.sum())
        # weights whose nearest level is not zero, and those of them within 5 % of a step
        lv = q != 0
        near_lv += int(lv.sum())
        on_lv += int((((mat - q).abs() <= 0.05 * wm * step) & lv).sum())
        if top is not None:
            above += int(((mat.abs() / wm > top) & nz).sum())
    return {
        "on_level": on_level_fraction(model, layout, n_levels, units=units),
        # on_level counts weights near zero as on level 0 (L2 scores ~0.33 that way)
        "on_nonzero_level": on_lv / max(near_lv, 1),
        "quant_rel_err": (err2 / max(nrm2, 1e-30)) ** 0.5,
        "aging_clipped_share": above / max(nz_tot, 1) if top is not None else None,
        "w_max": w_max,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "prunix_compare.yaml"))
    ap.add_argument("--experiment", type=int, default=0, help="index into experiments")
    ap.add_argument("--out", default=str(ROOT / "results" / "prunix" / "grid_probe"))
    ap.add_argument(
        "--arms",
        default="group_sawtooth:apa,l2:apa,group_sawtooth:global,l2:global",
        help="comma-separated regularizer:pruner pairs",
    )
    ap.add_argument("--trials", type=int, help="Monte Carlo trials (default: the config's)")
    ap.add_argument("--quick", action="store_true", help="embedded MNIST subset, tiny schedule")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    cfg = load_yaml(a.config)
    e = cfg["experiments"][a.experiment]
    common = {k: v for k, v in (cfg.get("params") or {}).items() if k != "pruner"}
    train_cfg = from_dict(TrainConfig, cfg["train"], "train")
    ft_cfg = from_dict(TrainConfig, cfg["finetune"], "finetune")
    ev_raw = dict(cfg.get("evaluate") or {})
    data_raw = dict(e["data"])
    arms = [tuple(x.split(":")) for x in a.arms.split(",") if x]
    if a.quick:
        data_raw = {"name": "mnist-embedded", "val_size": 0.1, "train_subset": 600}
        data_raw["test_subset"] = 200
        train_cfg = replace(train_cfg, epochs=1)
        ft_cfg = replace(ft_cfg, epochs=1)
        common.update(
            reg_epochs=1, rounds=1, ft_epochs=0, sens_samples=100, sens_trials=1, grid=[0.5, 0.9]
        )
        ev_raw["trials"] = 1
        if a.arms == ap.get_default("arms"):
            arms = [("group_sawtooth", "apa"), ("group_sawtooth", "global"), ("l2", "global")]
    if a.trials:
        ev_raw["trials"] = a.trials
    mc = from_dict(ModelConfig, e["model"], "model")
    dc = from_dict(DataConfig, data_raw, "data")
    xbar = from_dict(CrossbarSpec, cfg["crossbar"], "crossbar")
    dev = from_dict(DeviceSpec, cfg["device"], "device")
    ni_name = cfg.get("nonideal", "prunix")
    if not isinstance(ni_name, str):
        raise SystemExit("prunix_grid_probe: the config's nonideal must be a preset name")
    ni_all = NonIdealityModel.from_config(preset(ni_name))
    seed = int(cfg.get("seed", 0))
    set_threads(cfg)
    if a.quick:
        torch.set_num_threads(1)
    device = select_device()
    out = ensure_dir(Path(a.out))
    work = ensure_dir(out / "work")
    bench = Bench.open(mc, dc, seed, work / f"{mc.name}_{dc.name}", device)
    dense = bench.dense(train_cfg)
    layout = map_model(dense, xbar)
    regs = dict(cfg.get("regularizers") or {})
    eff = effects(ni_name)
    aging = preset(ni_name).aging
    ctx0 = bench.context(dense, layout, dev, ft_cfg, ni_all)
    n_levels, units = sawtooth_grid(ctx0)
    info = {
        "grid_units": list(units or simulator_grid(xbar.cells_per_weight, dev.levels)),
        "quant_levels_preset": preset(ni_name).quantization.levels
        if preset(ni_name).quantization
        else None,
        "device_levels": dev.levels,
        "encoding": xbar.encoding,
        "cells_per_weight": xbar.cells_per_weight,
    }
    dense_diag = grid_diagnostics(dense, layout, n_levels, units, aging, dev)

    def measure_all(m, lay) -> dict:
        res = {}
        for ename, (ncfg, times) in eff.items():
            ev = from_dict(EvaluateConfig, {**ev_raw, "times": list(times)}, "evaluate")
            rec = bench.measure(m, lay, dev, NonIdealityModel.from_config(ncfg), ev)
            res[ename] = {
                "acc_ideal": rec["base"]["acc_ideal"],
                "sparsity_weight": rec["base"]["sparsity_weight"],
                "crossbar_saving": rec["base"]["crossbar_saving"],
                "points": rec["nonideal"],
            }
        return res

    records = {}
    reg_models: dict[str, Path] = {}
    for reg, pruner in arms:
        params = from_dict(
            PrunixParams, {**common, **(regs.get(reg) or {}), "regularizer": reg}, "params"
        )
        if reg not in reg_models:
            path = bench.work / f"reg_{reg}.pt"
            reg_diag_path = bench.work / f"reg_{reg}_diag.json"
            if not path.is_file():
                m = copy.deepcopy(dense)
                r = build_regularizer(params, bench.context(m, layout, dev, ft_cfg, ni_all))
                if r is not None and params.reg_epochs > 0:
                    train(
                        m,
                        bench.splits.train,
                        ft_cfg,
                        device=device,
                        regularizer=r,
                        seed=seed + 3,
                        desc=f"reg {reg}",
                        epochs=params.reg_epochs,
                        log=bench.log,
                    )
                bench.save(m, path)
            if not reg_diag_path.is_file():
                diag = grid_diagnostics(bench.load(path), layout, n_levels, units, aging, dev)
                atomic_write_json(reg_diag_path, diag)
            reg_models[reg] = path

        def build(reg=reg, pruner=pruner, params=params) -> dict:
            m = bench.load(reg_models[reg])
            p = replace(params, pruner=pruner, reg_epochs=0)
            ctx = bench.context(m, layout, dev, ft_cfg, ni_all)
            res = run_prunix(ctx, p)
            before = grid_diagnostics(m, layout, n_levels, units, aging, dev)
            variants = {}
            for final in ("plain", "kept"):
                mv = copy.deepcopy(m)
                cv = bench.context(mv, layout, dev, ft_cfg, ni_all)
                freg = build_regularizer(p, cv) if final == "kept" else None
                bench.finetune(mv, res.masks, ft_cfg, regularizer=freg)
                after = grid_diagnostics(mv, layout, n_levels, units, aging, dev)
                lay = pack_layout(layout, mv, p.kind) if p.pack else layout
                variants[final] = {"after_final": after, "effects": measure_all(mv, lay)}
                bench.log(
                    f"[probe] {reg}+{pruner} final={final}: on-level "
                    f"{before['on_level']:.3f} -> {after['on_level']:.3f}"
                )
            return {
                "base": {
                    "regularizer": reg,
                    "pruner": pruner,
                    "lam": params.lam,
                    "on_level_before_pruning": res.info.get("on_level_fraction_before_pruning"),
                    "before_final": before,
                    "variants": variants,
                },
                "nonideal": [],
            }

        key = f"probe_{reg}_{pruner}"
        cfg_fp = [params, pruner, {"probe": 1, "effects": sorted(eff), "ev": ev_raw}]
        rec = bench.arm(key, build, config=cfg_fp)["base"]
        reg_diag = json.loads((bench.work / f"reg_{reg}_diag.json").read_text())
        rec["after_regularization"] = reg_diag
        records[f"{reg}+{pruner}"] = rec

    summary = {
        "command": "python scripts/prunix_grid_probe.py" + (" --quick" if a.quick else ""),
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "config": a.config,
        "experiment": {"model": e["model"], "data": data_raw},
        "quick": a.quick,
        "grid": info,
        "dense": dense_diag,
        "arms": records,
    }
    atomic_write_json(out / "grid_probe.json", summary)
    atomic_write_text(out / "grid_probe.md", markdown(summary))
    print(f"wrote {out / 'grid_probe.json'} and {out / 'grid_probe.md'}")
    return 0


def _points(rec: dict, final: str) -> dict[tuple[str, float], dict]:
    out = {}
    for ename, r in rec["variants"][final]["effects"].items():
        for pt in r["points"]:
            out[(ename, pt["time_s"])] = pt
    return out


def markdown(s: dict) -> str:
    arms = s["arms"]
    g = s["grid"]
    lines = [
        "# PRUNIX grid probe (issue #21, item 8)",
        "",
        f"Command: `{s['command']}`  ",
        f"Wall time: {s['wall_time_s']:.0f} s; experiment {s['experiment']}  ",
        f"Grid: {g['encoding']}, k = {g['cells_per_weight']}, device levels "
        f"{g['device_levels']}, preset Quantization.levels {g['quant_levels_preset']}; "
        f"{len(g['grid_units'])} weight levels per layer (units of w_max).",
        "",
        "## On-level fraction (simulator grid, within 5 % of a step) and w_max",
        "",
        "| arm | after reg. | before final ft | after plain ft | after kept ft | "
        "on a non-zero level: before / plain / kept | rel. quant. error: before / plain / kept | "
        "w_max after / before (plain, per layer) | aging-clipped share (plain) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in arms.items():
        b = r["before_final"]
        pl = r["variants"]["plain"]["after_final"]
        kp = r["variants"]["kept"]["after_final"]
        ratio = ", ".join(f"{pl['w_max'][k] / b['w_max'][k]:.3f}" for k in b["w_max"])
        clip = pl["aging_clipped_share"]
        lines.append(
            f"| {name} | {r['after_regularization']['on_level']:.3f} | {b['on_level']:.3f} | "
            f"{pl['on_level']:.3f} | {kp['on_level']:.3f} | "
            f"{b['on_nonzero_level']:.3f} / {pl['on_nonzero_level']:.3f} / "
            f"{kp['on_nonzero_level']:.3f} | {b['quant_rel_err']:.4f} / "
            f"{pl['quant_rel_err']:.4f} / {kp['quant_rel_err']:.4f} | {ratio} | "
            f"{'–' if clip is None else f'{100 * clip:.2f} %'} |"
        )
    lines += ["", f"Dense model on-level fraction: {s['dense']['on_level']:.3f}.", ""]
    order = ["quantization", "drift+comp", "faults", "aging", "all"]
    keys = sorted(
        {k for r in arms.values() for k in _points(r, "plain")},
        key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1]),
    )
    lines += [
        "## Test accuracy per effect alone (mean ± std over trials, %)",
        "",
        "| effect @ time | "
        + " | ".join(f"{n} ({f})" for n in arms for f in ("plain", "kept"))
        + " |",
        "|---|" + "---|" * (2 * len(arms)),
    ]
    for k in keys:
        cells = []
        for r in arms.values():
            for f in ("plain", "kept"):
                pt = _points(r, f).get(k)
                cells.append(
                    "–" if pt is None else f"{100 * pt['mean']:.2f} ± {100 * pt['std']:.2f}"
                )
        lines.append(f"| {k[0]} @ {format_time(k[1])} | " + " | ".join(cells) + " |")
    ideal = []
    for r in arms.values():
        for f in ("plain", "kept"):
            ideal.append(f"{100 * r['variants'][f]['effects']['all']['acc_ideal']:.2f}")
    lines.append("| ideal | " + " | ".join(ideal) + " |")
    spars = []
    for r in arms.values():
        for f in ("plain", "kept"):
            spars.append(f"{100 * r['variants'][f]['effects']['all']['sparsity_weight']:.1f} %")
    lines.append("| weight sparsity | " + " | ".join(spars) + " |")
    # sawtooth - L2, same pruner, paired per trial (same Monte Carlo seeds)
    pairs = []
    for pruner in ("apa", "uniform", "global"):
        a_, b_ = f"group_sawtooth+{pruner}", f"l2+{pruner}"
        if a_ in arms and b_ in arms:
            pairs.append((a_, b_))
    if pairs:
        lines += [
            "",
            "## Sawtooth − L2 at the same pruner and target (paired per trial, mean ± s.e., pp)",
            "",
            "| effect @ time | "
            + " | ".join(f"{a_.split('+')[1]} ({f})" for a_, _ in pairs for f in ("plain", "kept"))
            + " |",
            "|---|" + "---|" * (2 * len(pairs)),
        ]
        for k in keys:
            cells = []
            for a_, b_ in pairs:
                for f in ("plain", "kept"):
                    pa, pb = _points(arms[a_], f).get(k), _points(arms[b_], f).get(k)
                    if pa is None or pb is None:
                        cells.append("–")
                        continue
                    d, se = paired_difference(pa["per_trial"], pb["per_trial"])
                    cells.append(f"{100 * d:+.1f} ± {100 * se:.1f}")
            lines.append(f"| {k[0]} @ {format_time(k[1])} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
