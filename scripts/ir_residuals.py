"""Weight error that the parasitics leave after per-column gain calibration (issue #8).

For the cached models of the ``sparse_nonideal`` study (``results/sparse_nonideal/work``), each
model is programmed with the parasitics alone (ideal cells; R_source = R_sink = 1 kOhm, r_row
5 ohm, r_col 10 ohm, RRAM 50 kOhm / ON:OFF 10, column calibration on) and the calibrated
effective weights are compared with the intended ones: relative RMS error per layer and over
all mapped layers, and the same with ``row_calibration`` (per-tile-row input gains fitted
jointly with the column gains), i.e. how much of the error is row-wise attenuation that a
column calibration cannot undo.

    python scripts/ir_residuals.py [--work results/sparse_nonideal/work/vgg11_fashion-mnist]
        [--model vgg11 --width 0.125] [--sizes 32 64] [--per-layer]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from xbarprune.analog import convert
from xbarprune.analog.parasitics import RRAM_DATE22
from xbarprune.compress.methods.structured import PACK_KIND
from xbarprune.hardware import CrossbarSpec
from xbarprune.hardware.nonideal.model import IRDrop, NonIdealityConfig, NonIdealityModel
from xbarprune.io import load_checkpoint, load_state_into
from xbarprune.mapping import CrossbarLayout, map_model
from xbarprune.mapping.matrix import weight_to_matrix
from xbarprune.mapping.permute import pack_layout
from xbarprune.models import build_model


def residuals(model, layout, nonideal) -> tuple[dict[str, float], float]:
    """(per-layer relative RMS error of the calibrated effective weights %, overall %)."""
    am = convert(model, layout, RRAM_DATE22, nonideal)
    am.program(torch.Generator().manual_seed(0))
    mods, amods = dict(model.named_modules()), dict(am.model.named_modules())
    per, num, den = {}, 0.0, 0.0
    for name in layout.layers:
        w = weight_to_matrix(mods[name].weight.detach()).double()
        we = amods[name]._w_eff.double()
        err = float(((we - w) ** 2).sum())
        per[name] = 100 * (err / max(float((w**2).sum()), 1e-30)) ** 0.5
        num, den = num + err, den + float((w**2).sum())
    return per, 100 * (num / den) ** 0.5


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="results/sparse_nonideal/work/vgg11_fashion-mnist")
    ap.add_argument("--model", default="vgg11")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--per-layer", action="store_true")
    a = ap.parse_args(argv)
    ir = IRDrop(r_row=5.0, r_col=10.0, r_source=1000.0, r_sink=1000.0)
    ni = NonIdealityModel.from_config(NonIdealityConfig(ir_drop=ir, column_calibration=True))
    ni_rows = NonIdealityModel.from_config(
        NonIdealityConfig(ir_drop=ir, column_calibration=True, row_calibration=True)
    )
    work = Path(a.work)
    for size in a.sizes:
        xbar = CrossbarSpec(size, size)
        cases = [("dense", "dense.pt")] + [
            (s, f"{s}{size}_s{p}.pt") for s in ("xcs", "xrs") for p in ("0.5", "0.75")
        ]
        for scheme, fname in cases:
            if not (work / fname).is_file():
                continue
            m = build_model(a.model, num_classes=10, in_channels=1, image_size=32,
                            width=a.width, seed=0)  # fmt: skip
            load_state_into(m, load_checkpoint(work / fname)["model"], fname)
            m.eval()
            full = map_model(m, xbar, on_unsupported="digital")
            lay = CrossbarLayout(xbar, {k: v for k, v in full.layers.items() if v.kind == "conv"})
            if scheme != "dense":
                lay = pack_layout(lay, m, PACK_KIND[scheme])
            per, tot = residuals(m, lay, ni)
            per_r, tot_r = residuals(m, lay, ni_rows)
            print(f"{size}x{size} {fname:18s} {lay.n_tiles:4d} tiles  error {tot:5.2f} % "
                  f"(columns calibrated), {tot_r:5.2f} % (rows + columns)")  # fmt: skip
            if a.per_layer:
                for k, v in per.items():
                    print(f"    {k:20s} {v:5.2f} %  {per_r[k]:5.2f} %")


if __name__ == "__main__":
    main()
