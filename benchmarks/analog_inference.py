"""Speed of the analog simulator against the digital forward pass, side by side in one run.

Measures, on the same model, weights and batch (median of ``--repeat`` timings each):

* ``digital_s``: the plain PyTorch forward pass;
* ``weight_level_s``: one Monte Carlo trial with weight-level effects (quantisation +
  programming variation + drift + stuck-at faults): sampling the conductances (O(weights))
  plus the forward pass through the effective weights;
* ``tile_adc_s``: the same with 8-bit ADCs on every tile's per-column partial sums (and 8-bit
  DACs), which needs the per-tile forward path.

Targets on CPU (issue #2): weight-level <= 1.3x digital, per-tile ADC <= 3x digital.

    python benchmarks/analog_inference.py [--model lenet5] [--batch 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from xbarprune.analog import convert, trial_generator
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal.model import (
    DriftConfig,
    FaultsConfig,
    NonIdealityConfig,
    NonIdealityModel,
    QuantizationConfig,
    VariationConfig,
)
from xbarprune.mapping import map_model
from xbarprune.models import build_model


def _median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--cols", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model = (
        build_model(a.model, in_channels=a.in_channels, image_size=a.image_size, seed=0)
        .to(dev)
        .eval()
    )
    x = torch.randn(a.batch, a.in_channels, a.image_size, a.image_size, device=dev)
    xbar = CrossbarSpec(a.rows, a.cols)
    layout = map_model(model, xbar)
    dspec = DeviceSpec()
    weight_cfg = NonIdealityConfig(
        quantization=QuantizationConfig(),
        variation=VariationConfig(sigma=0.05, mode="relative"),
        drift=DriftConfig(nu_mean=0.1, nu_std=0.02, t0=1.0),
        faults=FaultsConfig(sa0=0.01, sa1=0.01),
    )
    adc_cfg = NonIdealityConfig(**{**weight_cfg.__dict__, "adc_bits": 8, "dac_bits": 8})
    results = {}
    with torch.no_grad():
        results["digital_s"] = _median_time(lambda: model(x), a.repeat)
        for key, cfg in (("weight_level_s", weight_cfg), ("tile_adc_s", adc_cfg)):
            am = convert(model, layout, dspec, NonIdealityModel.from_config(cfg)).to(dev)
            counter = iter(range(10**9))

            def trial(am=am, counter=counter):
                am.program(trial_generator(0, next(counter), dev), time_s=86400.0)
                return am(x)

            results[key] = _median_time(trial, a.repeat)
    out = {
        "model": a.model,
        "batch": a.batch,
        "crossbar": f"{a.rows}x{a.cols}",
        "device": str(dev),
        "threads": a.threads,
        **{k: round(v, 6) for k, v in results.items()},
        "weight_level_ratio": round(results["weight_level_s"] / results["digital_s"], 3),
        "tile_adc_ratio": round(results["tile_adc_s"] / results["digital_s"], 3),
    }
    print(
        f"model {a.model}, batch {a.batch}, {out['crossbar']} tiles, {dev}, "
        f"{a.threads} threads (median of {a.repeat})"
    )
    print(f"  digital forward          {1e3 * results['digital_s']:9.2f} ms")
    print(
        f"  analog, weight-level     {1e3 * results['weight_level_s']:9.2f} ms  "
        f"({out['weight_level_ratio']:.2f}x digital; target <= 1.3x)"
    )
    print(
        f"  analog, per-tile ADC     {1e3 * results['tile_adc_s']:9.2f} ms  "
        f"({out['tile_adc_ratio']:.2f}x digital; target <= 3x)"
    )
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
