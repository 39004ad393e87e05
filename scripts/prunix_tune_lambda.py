"""Tune each regulariser's strength on the comparison's own objective (a fair-baseline protocol).

For every regulariser and every lambda on its grid (the same number of values for each), run the
whole PRUNIX arm on a *validation* split: regularised training from the dense model, APA pruning
to the target sparsity with fine-tuning rounds, the final fine-tune, then the mean non-ideal
accuracy (``nonideal`` preset, ``--trials`` Monte Carlo trials at 1 day) on held-out validation
images (never the test set). The best lambda per regulariser is printed and saved; the
comparison config then uses it for every pruner.

    python scripts/prunix_tune_lambda.py --config examples/prunix_compare.yaml \
        --json results/prunix/lambda_tuning.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from xbarprune.analog import evaluate
from xbarprune.compress.base import CompressContext
from xbarprune.compress.methods.prunix import PrunixParams, build_regularizer, run_prunix
from xbarprune.config import from_dict, load_yaml
from xbarprune.data import load_splits
from xbarprune.experiment.bench import _merge
from xbarprune.experiment.config import DataConfig, ModelConfig
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal.model import NonIdealityModel, preset
from xbarprune.mapping import map_model
from xbarprune.mapping.permute import pack_layout
from xbarprune.models import build_model
from xbarprune.training import TrainConfig, train

GRIDS = {
    "none": [0.0],
    "l1": [10.0, 30.0, 100.0],
    "l2": [100.0, 300.0, 1000.0],
    "group_lasso": [0.1, 0.3, 1.0],
    "group_sawtooth": [1.0, 3.0, 10.0],
}


def flat_setting(cfg: dict[str, Any]) -> dict[str, Any]:
    """The PRUNIX comparison's setting, read from its engine config (``kind: bench``) in the
    flat shape this script uses: ``experiments`` (each ``{"model", "data"}``), ``train``,
    ``finetune``, ``crossbar``, ``device``, ``nonideal`` (the first preset), ``params`` (the
    PRUNIX arm's, without ``regularizer``/``lam``) and ``regularizers`` (name -> lambda)."""
    if cfg.get("kind") != "bench":
        raise SystemExit("expected the engine config of the PRUNIX comparison (kind: bench)")
    base = cfg.get("base") or {}
    exps = [_merge(base, e.get("base") or {}) for e in cfg.get("experiments") or [{}]]
    prunix = [m for m in cfg.get("methods") or [] if m.get("name") == "prunix"]
    if not prunix:
        raise SystemExit("the config has no prunix arm")
    regs: dict[str, dict[str, float]] = {}
    for m in prunix:
        p = m.get("params") or {}
        regs.setdefault(p.get("regularizer", "group_sawtooth"), {"lam": p.get("lam", 0.0)})
    head = next(m for m in prunix if m.get("label", "prunix") == "prunix")
    params = {k: v for k, v in (head.get("params") or {}).items()
              if k not in ("regularizer", "lam")}  # fmt: skip
    return {
        "experiments": [{"model": e["model"], "data": e["data"]} for e in exps],
        **{k: base[k] for k in ("train", "finetune", "crossbar", "device", "evaluate")},
        "nonideal": (cfg.get("presets") or ["prunix"])[0],
        "params": params,
        "regularizers": regs,
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/prunix_compare.yaml")
    ap.add_argument("--experiment", type=int, default=0, help="index into experiments")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument(
        "--grid",
        help="JSON mapping regulariser -> lambdas, replacing the default "
        "grids (e.g. to extend a grid whose best value lies on its boundary)",
    )
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    grids = json.loads(a.grid) if a.grid else GRIDS
    cfg = flat_setting(load_yaml(a.config))
    torch.set_num_threads(2)
    e = cfg["experiments"][a.experiment]
    mc = from_dict(ModelConfig, e["model"], "model")
    dc = from_dict(DataConfig, e["data"], "data")
    s = load_splits(dc.name, dc.root, val_size=dc.val, train_subset=dc.train_subset, seed=0)
    xbar = from_dict(CrossbarSpec, cfg["crossbar"], "crossbar")
    dev = from_dict(DeviceSpec, cfg["device"], "device")
    tcfg = from_dict(TrainConfig, cfg["train"], "train")
    ft = from_dict(TrainConfig, cfg["finetune"], "finetune")
    ni = NonIdealityModel.from_config(preset(cfg.get("nonideal", "prunix")))
    common = dict(cfg.get("params") or {})
    # tuning data: the first half of the validation split drives APA, the second half scores
    half = len(s.val) // 2
    apa_val = Subset(s.val, range(half))
    score_val = DataLoader(
        Subset(s.val, range(half, min(len(s.val), half + a.val_images))), batch_size=1000
    )
    dense = build_model(
        mc.name, in_channels=s.in_channels, image_size=s.image_size, width=mc.width, seed=0
    )
    train(dense, s.train, tcfg, seed=0)
    layout = map_model(dense, xbar)
    rows = []
    for reg, grid in grids.items():
        for lam in grid:
            t0 = time.perf_counter()
            m = copy.deepcopy(dense)
            p = from_dict(PrunixParams, {**common, "regularizer": reg, "lam": lam}, "params")
            ctx = CompressContext(
                model=m,
                layout=layout,
                device_spec=dev,
                train_data=s.train,
                val_data=apa_val,
                finetune_cfg=ft,
                nonideal=ni,
                log=lambda _: None,
            )
            r = build_regularizer(p, ctx)
            if r is not None:
                train(m, s.train, ft, regularizer=r, seed=3, epochs=p.reg_epochs)
            res = run_prunix(ctx, replace(p, reg_epochs=0, pruner="apa"))
            train(m, s.train, ft, masks=res.masks, seed=5)
            out = evaluate(
                m,
                score_val,
                pack_layout(layout, m, p.kind),
                dev,
                ni,
                trials=a.trials,
                seed=11,
                times=(86400.0,),
            )
            row = {
                "regularizer": reg,
                "lam": lam,
                "val_nonideal_1d": out[0].mean,
                "val_nonideal_std": out[0].std,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"{reg:>15} lam={lam:<7g} non-ideal val @1d {out[0].mean:.4f} ± "
                f"{out[0].std:.4f} ({row['seconds']:.0f} s)",
                flush=True,
            )
    best = {}
    for reg in grids:
        cand = [r for r in rows if r["regularizer"] == reg]
        best[reg] = max(cand, key=lambda r: r["val_nonideal_1d"])["lam"]
    print("best:", best)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "experiment": e,
                    "rows": rows,
                    "best": best,
                    "trials": a.trials,
                    "val_images": a.val_images,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
