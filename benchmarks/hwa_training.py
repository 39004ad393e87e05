"""Speed of hardware-aware (HWA) training through the realistic periphery, side by side.

One SGD step (forward, cross-entropy, backward, update) of a model in training mode:

* ``plain_s``: no HWA;
* ``hwa_weight_s``: HWA with weight noise only (``weight_noise``, no periphery);
* ``hwa_io_s``: HWA through ``aihwkit-default`` (PCM programming noise + 3.8 % weight noise +
  the I/O periphery: abs-max noise management, 7-bit DAC, output noise, 9-bit ADC, iterative
  bound management), the fast path (``io_mvm``'s ``_IOMVM``: fast-pass forward, written-out
  straight-through backward);
* ``hwa_io_reference_s``: the same through ``io_mvm_reference`` (autograd through the chain of
  reference functions), the path HWA took before issue #20's change.

Medians of ``--repeat`` interleaved steps on the same model and batch, after one warm-up
each. The two HWA-through-periphery paths compute the same gradients (tests/test_io_grad.py).

    python benchmarks/hwa_training.py [--model vgg-small] [--batch 128] [--threads 1 --clock cpu]
        [--device cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from xbarprune.hardware.nonideal.io import io_mvm_reference
from xbarprune.models import build_model
from xbarprune.training import hwa as hwa_mod
from xbarprune.training.hwa import HWAConfig, install_hwa


def _reference_io(x, w, io, gen, dim=-1, scale=None):
    return io_mvm_reference(x, w, io, gen, dim)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg-small")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cpu_clock = a.clock == "cpu" and dev.type == "cpu"
    clock = time.process_time if cpu_clock else time.perf_counter
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, a.in_channels, a.image_size, a.image_size, generator=g).to(dev)
    y = torch.randint(0, 10, (a.batch,), generator=g).to(dev)
    hw_io = HWAConfig(preset="aihwkit-default", weight_noise=0.038)
    variants = {
        "plain": (None, False),
        "hwa_weight": (HWAConfig(weight_noise=0.038), False),
        "hwa_io": (hw_io, False),
        "hwa_io_reference": (hw_io, True),
    }
    models, opts = {}, {}
    for k, (cfg, _) in variants.items():
        m = build_model(a.model, in_channels=a.in_channels, image_size=a.image_size, seed=0)
        m.to(dev).train()
        if cfg is not None:
            install_hwa(m, cfg, seed=0)
        models[k] = m
        opts[k] = torch.optim.SGD(m.parameters(), lr=1e-3)
    fast_io = hwa_mod.io_mvm

    def step(k: str) -> float:
        hwa_mod.io_mvm = _reference_io if variants[k][1] else fast_io
        try:
            t0 = clock()
            opts[k].zero_grad()
            F.cross_entropy(models[k](x), y).backward()
            opts[k].step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return clock() - t0
        finally:
            hwa_mod.io_mvm = fast_io

    for k in variants:
        step(k)
    ts: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.repeat):
        for k in variants:
            ts[k].append(step(k))
    res: dict = {k + "_s": statistics.median(v) for k, v in ts.items()}
    for k in ("hwa_weight", "hwa_io", "hwa_io_reference"):
        res[k + "_ratio"] = res[k + "_s"] / res["plain_s"]
    res["speedup_vs_reference"] = res["hwa_io_reference_s"] / res["hwa_io_s"]
    res.update(
        model=a.model,
        batch=a.batch,
        device=str(dev),
        threads=torch.get_num_threads(),
        clock=a.clock if cpu_clock else "wall",
    )
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k in variants:
            r = res[k + "_s"] / res["plain_s"]
            print(f"{k:18s} {1e3 * res[k + '_s']:9.1f} ms  {r:5.2f}x plain")
    return res


if __name__ == "__main__":
    main()
