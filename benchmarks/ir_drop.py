"""Speed of the IR-drop (parasitics) simulation against the digital forward pass (issue #8).

The Fashion-MNIST test set (padded to 32x32; ``--test-subset`` for fewer images; random
inputs when the data are not found) through VGG-11 (``--width``) with every conv layer on
64x64 crossbars, side by side in one run:

* ``digital_s``: the plain PyTorch forward pass over the test set;
* ``ir_drop_s``: one Monte Carlo trial of the ``ir_drop`` preset (4-bit cells; R_source =
  R_sink = 1 kOhm, r_row 5 ohm, r_col 10 ohm) on the RRAM cell (R_ON 50 kOhm, ON/OFF 10):
  the exact effective-conductance solve of every tile (once per trial) plus the forward pass
  over the test set through the effective weights.

Both are medians of ``--repeat`` runs. Target: ``ir_drop_s <= 5 x digital_s``. The last line
(with ``--json``) is a JSON object with ``model, crossbar, digital_s, ir_drop_s`` and more.

``--solvers N`` instead times the exact solvers against each other on ``N`` random RRAM tiles
(G uniform in [2, 20] uS, the preset's resistances): ``direct`` (the default) and
``iterative`` at tolerances 1e-12 / 1e-9 / 1e-6, ms per tile and the largest relative
difference from ``direct``.

    python benchmarks/ir_drop.py [--width 1] [--test-subset 10000] [--repeat 3] [--json]
    python benchmarks/ir_drop.py --solvers 32 [--size 64] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from xbarprune.analog import convert, trial_generator
from xbarprune.analog.parasitics import RRAM_DATE22
from xbarprune.hardware import CrossbarSpec
from xbarprune.hardware.nonideal.model import NonIdealityModel
from xbarprune.mapping import CrossbarLayout, map_model
from xbarprune.metrics import accuracy
from xbarprune.models import build_model


def _data(root: str, n: int | None, batch: int, seed: int = 0):
    from xbarprune.data import load_splits
    from xbarprune.errors import DataError

    try:
        s = load_splits("fashion-mnist", root, test_subset=n, pad_to=32, seed=seed)
        return DataLoader(s.test, batch_size=batch), "fashion-mnist", len(s.test)
    except (DataError, OSError):
        n = n or 10000
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 1, 32, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=batch), "random", n


def _median(fn, repeat: int) -> float:
    ts = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def solvers(n: int, size: int) -> dict:
    """ms per tile of each exact solver on ``n`` random tiles, side by side."""
    from xbarprune.hardware.nonideal.ir_drop import effective_conductance

    g = torch.Generator().manual_seed(0)
    tiles = 2e-6 + 1.8e-5 * torch.rand(n, size, size, generator=g, dtype=torch.float64)
    r = (5.0, 10.0, 1000.0, 1000.0)
    runs = {"direct": {"method": "direct"}}
    for tol in (1e-12, 1e-9, 1e-6):
        runs[f"iterative tol {tol:g}"] = {"method": "iterative", "tol": tol}
    out: dict = {"tiles": n, "crossbar": f"{size}x{size}", "threads": torch.get_num_threads()}
    ref = None
    for name, kw in runs.items():
        t = time.perf_counter()
        geff = effective_conductance(tiles, *r, **kw)
        ms = (time.perf_counter() - t) / n * 1e3
        if ref is None:
            ref = geff
        err = float((geff - ref).abs().max() / ref.abs().max())
        out[name] = {"ms_per_tile": round(ms, 2), "max_rel_diff": err}
        print(f"  {name:22s} {ms:8.2f} ms/tile   max rel diff from direct {err:.1e}")
    base = out["direct"]["ms_per_tile"]
    out["speedup_vs_iterative_1e-12"] = round(out["iterative tol 1e-12"]["ms_per_tile"] / base, 2)
    print(f"  direct is {out['speedup_vs_iterative_1e-12']:.1f}x faster than iterative at 1e-12")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg11")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--test-subset", type=int, default=None, help="default: the full test set")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64, help="crossbar rows = cols")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--solvers", type=int, default=0, help="time the solvers on N tiles")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.solvers:
        res = solvers(a.solvers, a.size)
        if a.json:
            print(json.dumps(res))
        return res
    dev = torch.device(a.device)
    loader, dname, n = _data(a.data_root, a.test_subset, a.batch)
    model = build_model(a.model, in_channels=1, image_size=32, width=a.width, seed=0).to(dev)
    model.eval()
    xbar = CrossbarSpec(a.size, a.size)
    full = map_model(model, xbar)
    layout = CrossbarLayout(xbar, {k: v for k, v in full.layers.items() if v.kind == "conv"})
    ni = NonIdealityModel.from_config("ir_drop")
    am = convert(model, layout, RRAM_DATE22, ni).to(dev)
    accuracy(model, [next(iter(loader))], dev)  # warm-up
    with torch.no_grad():
        digital = _median(lambda i: accuracy(model, loader, dev), a.repeat)
        prog: list[float] = []

        def trial(i: int) -> None:
            t = time.perf_counter()
            am.program(trial_generator(0, i, dev))
            prog.append(time.perf_counter() - t)
            accuracy(am, loader, dev)

        ir = _median(trial, a.repeat)
    out = {
        "model": a.model,
        "width": a.width,
        "crossbar": f"{a.size}x{a.size}",
        "tiles": layout.n_tiles,
        "data": dname,
        "images": n,
        "device": str(dev),
        "threads": a.threads,
        "digital_s": round(digital, 3),
        "ir_drop_s": round(ir, 3),
        "solve_s": round(statistics.median(prog), 3),
        "ratio": round(ir / digital, 3),
    }
    print(
        f"{a.model} (width {a.width}), {n} {dname} images, {layout.n_tiles} tiles of "
        f"{out['crossbar']}, {dev}, {a.threads} threads (median of {a.repeat})"
    )
    print(f"  digital forward          {digital:9.2f} s")
    print(
        f"  IR drop, one trial       {ir:9.2f} s  (solve {out['solve_s']:.2f} s; "
        f"{out['ratio']:.2f}x digital; target <= 5x)"
    )
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
