"""Pick each regulariser's strength for the PRUNIX comparison (a fair-baseline protocol).

For LeNet-5 on MNIST (a training subset), train the dense model, then for every regulariser and
every lambda on a grid train ``reg_epochs`` epochs from the dense model and measure validation
accuracy, the share of tile-column groups whose RMS is below 5 % of the layer's largest group
RMS ("near-empty groups", what pruning can remove for free), and the share of non-zero weights
within 5 % of a grid step of a conductance level. The protocol keeps, per regulariser, the
largest lambda whose validation accuracy stays within ``--max-drop`` of the dense model.

    python scripts/prunix_lambda_sweep.py --data-root ../shared/data [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from xbarprune.compress.methods.prunix import PrunixParams, build_regularizer
from xbarprune.compress.parts.sawtooth import on_level_fraction
from xbarprune.data import load_splits
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.mapping import layer_matrices, map_model
from xbarprune.models import build_model
from xbarprune.training import TrainConfig, train
from xbarprune.training.loop import evaluate_accuracy

GRIDS = {
    "l1": [10.0, 30.0, 100.0, 300.0, 1000.0],
    "l2": [100.0, 300.0, 1000.0, 3000.0, 10000.0],
    "group_lasso": [1.0, 3.0, 10.0, 30.0, 100.0],
    "group_sawtooth": [1.0, 3.0, 10.0, 30.0, 100.0],
}


def near_empty_groups(model, layout, kind="tile_column", frac=0.05) -> float:
    mats = layer_matrices(model, layout)
    tot = small = 0
    for layer in layout:
        g = layer.groups(kind)
        rms = g.norms(mats[layer.name]) / g.sizes.float().sqrt()
        small += int((rms < frac * rms.max()).sum())
        tot += len(g)
    return small / tot


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reg-epochs", type=int, default=2)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    s = load_splits(a.dataset, a.data_root, val_size=5000, train_subset=a.train_subset, seed=0)
    dense = build_model(a.model, in_channels=s.in_channels, image_size=s.image_size, seed=0)
    cfg = TrainConfig(epochs=a.epochs, batch_size=128, lr=0.002, progress=False)
    train(dense, s.train, cfg, seed=0)
    layout = map_model(dense, CrossbarSpec(64, 64))
    dev = DeviceSpec(levels=8)
    val = torch.utils.data.DataLoader(s.val, batch_size=1000)
    base = evaluate_accuracy(dense, val, "cpu")
    rows = [
        {
            "regularizer": "none",
            "lam": 0.0,
            "val_acc": base,
            "near_empty_groups": near_empty_groups(dense, layout),
            "on_level": on_level_fraction(dense, layout, 8),
        }
    ]
    print(f"dense: val {base:.4f}")
    ft = TrainConfig(epochs=a.reg_epochs, batch_size=128, lr=0.0005, progress=False)
    for reg, grid in GRIDS.items():
        for lam in grid:
            m = copy.deepcopy(dense)
            p = PrunixParams(regularizer=reg, lam=lam)
            from xbarprune.compress.base import CompressContext

            ctx = CompressContext(
                model=m,
                layout=layout,
                device_spec=dev,
                train_data=s.train,
                val_data=s.val,
                finetune_cfg=ft,
            )
            train(m, s.train, ft, regularizer=build_regularizer(p, ctx), seed=3)
            r = {
                "regularizer": reg,
                "lam": lam,
                "val_acc": evaluate_accuracy(m, val, "cpu"),
                "near_empty_groups": near_empty_groups(m, layout),
                "on_level": on_level_fraction(m, layout, 8),
            }
            rows.append(r)
            print(
                f"{reg:>15} lam={lam:<7g} val {r['val_acc']:.4f}  near-empty groups "
                f"{r['near_empty_groups']:.3f}  on-level {r['on_level']:.3f}"
            )
    chosen = {}
    for reg in GRIDS:
        ok = [r for r in rows if r["regularizer"] == reg and r["val_acc"] >= base - a.max_drop]
        chosen[reg] = max(ok, key=lambda r: r["lam"])["lam"] if ok else min(GRIDS[reg])
    print("chosen:", chosen)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "chosen": chosen, "dense_val": base}, fh, indent=2)


if __name__ == "__main__":
    main()
