"""Cost of the Group Sawtooth regulariser per training step, side by side in one run.

Times one SGD step (forward, cross-entropy, backward, update) on a fixed batch, plain and with
the PRUNIX Group Sawtooth term (and group lasso for reference) on the crossbar tile-column
groups, and prints the ratios. Target (issue #4): sawtooth adds <= 30 % to a step.

    python benchmarks/regularizer_overhead.py [--model lenet5] [--batch 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from xbarprune.compress.parts.regularizers import GroupLasso
from xbarprune.compress.parts.sawtooth import GroupSawtooth
from xbarprune.hardware import CrossbarSpec
from xbarprune.mapping import map_model
from xbarprune.models import build_model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--kind", default="tile_column")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = build_model(a.model, width=a.width, seed=0)
    layout = map_model(model, CrossbarSpec(a.rows, a.cols))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (a.batch,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    regs = {
        "plain": None,
        "group_sawtooth": GroupSawtooth(layout, n_levels=16, kind=a.kind, lam=1.0, warmup=0.0),
        "group_lasso": GroupLasso(layout, kind=a.kind, lam=1.0),
    }

    def step(reg):
        loss = F.cross_entropy(model(x), y)
        if reg is not None:
            loss = loss + reg(model, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = {k: [] for k in regs}
    for _ in range(3):  # warm-up
        for reg in regs.values():
            step(reg)
    for _ in range(a.repeat):  # interleaved, so load changes hit every variant alike
        for k, reg in regs.items():
            t0 = time.perf_counter()
            step(reg)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "model": a.model,
        "batch": a.batch,
        "kind": a.kind,
        "groups": sum(len(layer.groups(a.kind)) for layer in layout),
        "plain_s": med["plain"],
        "sawtooth_s": med["group_sawtooth"],
        "group_lasso_s": med["group_lasso"],
        "sawtooth_overhead": med["group_sawtooth"] / med["plain"] - 1,
        "group_lasso_overhead": med["group_lasso"] / med["plain"] - 1,
    }
    print(
        f"{a.model} (width {a.width}), batch {a.batch}, {out['groups']} {a.kind} groups on "
        f"{a.rows}x{a.cols} tiles, {a.threads} threads, median of {a.repeat}"
    )
    print(f"  plain step           {1e3 * med['plain']:8.2f} ms")
    print(
        f"  + group sawtooth     {1e3 * med['group_sawtooth']:8.2f} ms  "
        f"(+{100 * out['sawtooth_overhead']:.1f} %; target <= 30 %)"
    )
    print(
        f"  + group lasso        {1e3 * med['group_lasso']:8.2f} ms  "
        f"(+{100 * out['group_lasso_overhead']:.1f} %)"
    )
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
