"""Speed and memory of the analog simulator against the digital forward pass, side by side.

Measures, on the same model, weights and batch (median of ``--repeat`` interleaved timings):

* ``digital_s``: the plain PyTorch forward pass;
* ``weight_level_s``: one Monte Carlo trial with weight-level effects (quantisation +
  programming variation + drift + stuck-at faults): sampling the conductances (O(weights))
  plus the forward pass through the effective weights;
* ``tile_adc_s``: the same with 8-bit ADCs on every tile's per-column partial sums (and 8-bit
  DACs), which needs the per-tile forward path (:mod:`xbarprune.analog.kernels`);
* ``aihwkit_default_s``: one trial of the ``aihwkit-default`` preset (realistic I/O
  periphery), or null where this version has no such preset;
* ``batched10_s``: ``--trials`` (10) weight-level trials evaluated in one batched pass
  (:meth:`AnalogModel.program_trials`: K programmings, one forward on the trial-interleaved
  batch), against ``sequential10_s``, the same trials one by one;
* ``peak_mem_mb``: the peak memory of one trial (programming + forward) of ``--mem-model``
  (VGG-16 on 32x32 inputs, batch 256) per path, each in a fresh subprocess: on CPU the peak
  resident set (``VmHWM`` of /proc/self/status) minus the resident set just before the trial (the
  model, its analog copy and the input already built; glibc's mmap threshold fixed at 64 KiB
  so that freed memory leaves the resident set); on CUDA ``max_memory_allocated`` minus
  the allocation before the trial.

Targets (issue #20): per-tile ADC <= 2x digital, aihwkit-default <= 2x, weight-level <= 1.1x,
10 batched trials <= 6x one digital pass, peak memory <= 2x digital.

    python benchmarks/analog_inference.py [--model lenet5] [--batch 1000] [--device cuda]
        [--threads 1 --clock cpu] [--no-mem] [--json]

``--clock cpu`` times with the process CPU clock (``time.process_time``), which on a shared
machine is less sensitive to other processes than the wall clock; use it with ``--threads 1``
(with more threads it sums their CPU time). On CUDA the wall clock is used, synchronised.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from xbarprune.analog import convert, trial_generator
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal import model as _nimodel
from xbarprune.hardware.nonideal.model import (
    Drift,
    NonIdealityConfig,
    NonIdealityModel,
    ProgrammingVariation,
    Quantization,
    StuckAtFaults,
)
from xbarprune.mapping import map_model
from xbarprune.models import build_model

WEIGHT_CFG = NonIdealityConfig(
    quantization=Quantization(),
    variation=ProgrammingVariation(sigma=0.05, mode="relative"),
    drift=Drift(nu_mean=0.1, nu_std=0.02, t0=1.0),
    faults=StuckAtFaults(sa0=0.01, sa1=0.01),
)
ADC_CFG = NonIdealityConfig(**{**WEIGHT_CFG.__dict__, "adc_bits": 8, "dac_bits": 8})
AIHWKIT_PRESET = "aihwkit-default"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _interleaved_medians(fns: dict, repeat: int, dev: torch.device, clock) -> dict:
    for f in fns.values():  # warm-up (calibration, caches, kernels)
        f()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            _sync(dev)
            t0 = clock()
            f()
            _sync(dev)
            ts[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def _configs() -> dict[str, NonIdealityConfig | None]:
    aihw = _nimodel.PRESETS.get(AIHWKIT_PRESET)
    return {"weight": WEIGHT_CFG, "adc": ADC_CFG, "aihwkit": aihw}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float:
    """Peak resident set of this process image (``VmHWM``; unlike ``getrusage``'s
    ``ru_maxrss`` it starts afresh at ``exec``, not at the parent's size at ``fork``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mem_child(a) -> None:
    """One peak-memory measurement (``--mem-child MODE``), printed as JSON."""
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    model = build_model(a.mem_model, in_channels=3, image_size=a.mem_image_size, seed=0)
    model = model.to(dev).eval()
    x = torch.randn(a.mem_batch, 3, a.mem_image_size, a.mem_image_size, device=dev)
    run = model
    if a.mem_child != "digital":
        cfg = _configs()[a.mem_child]
        layout = map_model(model, CrossbarSpec(a.rows, a.cols))
        run = convert(model, layout, DeviceSpec(), NonIdealityModel.from_config(cfg)).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = _rss_mb()
    with torch.no_grad():
        if a.mem_child != "digital":
            run.program(trial_generator(0, 0, dev), time_s=86400.0)
        run(x)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        total = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        total = _hwm_mb()
        peak = total - base
    print(json.dumps({"peak_mb": round(peak, 1), "total_mb": round(total, 1)}))


def _peak_memory(a) -> dict:
    out: dict = {}
    for mode in ("digital", "weight", "adc", "aihwkit"):
        if mode == "aihwkit" and _configs()["aihwkit"] is None:
            out[mode] = None
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--mem-child", mode]
        for opt in (
            "mem_model",
            "mem_batch",
            "mem_image_size",
            "rows",
            "cols",
            "device",
            "threads",
        ):
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
        # every allocation >= 64 KiB its own mapping, returned to the OS when freed: the
        # resident set then follows the live tensors (no freed-but-kept heap pages)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--cols", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--trials", type=int, default=10, help="batched trials (batched10_s)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--mem-model", default="vgg16")
    ap.add_argument("--mem-batch", type=int, default=256)
    ap.add_argument("--mem-image-size", type=int, default=32)
    ap.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.mem_child:
        _mem_child(a)
        return {}
    mem = None if a.no_mem else _peak_memory(a)  # first: fresh subprocesses, small parent
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    clock = time.process_time if (a.clock == "cpu" and dev.type == "cpu") else time.perf_counter
    model = (
        build_model(a.model, in_channels=a.in_channels, image_size=a.image_size, seed=0)
        .to(dev)
        .eval()
    )
    x = torch.randn(a.batch, a.in_channels, a.image_size, a.image_size, device=dev)
    layout = map_model(model, CrossbarSpec(a.rows, a.cols))
    dspec = DeviceSpec()
    cfgs = _configs()
    K = a.trials
    xk = x.repeat_interleave(K, 0)
    fns = {"digital_s": lambda: model(x)}
    for key, name in (
        ("weight_level_s", "weight"),
        ("tile_adc_s", "adc"),
        ("aihwkit_default_s", "aihwkit"),
    ):
        if cfgs[name] is None:
            continue
        am = convert(model, layout, dspec, NonIdealityModel.from_config(cfgs[name])).to(dev)
        counter = iter(range(10**9))

        def trial(am=am, counter=counter):
            am.program(trial_generator(0, next(counter), dev), time_s=86400.0)
            return am(x)

        fns[key] = trial
    amb = convert(model, layout, dspec, NonIdealityModel.from_config(WEIGHT_CFG)).to(dev)

    def batched():
        amb.program_trials([trial_generator(0, i, dev) for i in range(K)], time_s=86400.0)
        return amb(xk)

    def sequential():
        for i in range(K):
            amb.program(trial_generator(0, i, dev), time_s=86400.0)
            amb(x)

    fns["batched10_s"] = batched
    fns["sequential10_s"] = sequential
    with torch.no_grad():
        res = _interleaved_medians(fns, a.repeat, dev, clock)
    res.setdefault("aihwkit_default_s", None)
    d = res["digital_s"]
    out = {
        "model": a.model,
        "batch": a.batch,
        "crossbar": f"{a.rows}x{a.cols}",
        "device": str(dev),
        "threads": a.threads,
        "clock": a.clock if dev.type == "cpu" else "wall",
        "trials_batched": K,
        **{k: (None if v is None else round(v, 6)) for k, v in res.items()},
    }
    for k in ("weight_level", "tile_adc", "aihwkit_default", "batched10", "sequential10"):
        v = res[f"{k}_s"]
        out[f"{k}_ratio"] = None if v is None else round(v / d, 3)
    out["peak_mem_mb"] = None
    if mem is not None:
        dm = mem["digital"]["peak_mb"]
        out["peak_mem_mb"] = {
            "model": f"{a.mem_model} {a.mem_image_size}x{a.mem_image_size} batch {a.mem_batch}",
            **{k: v for k, v in mem.items()},
            **{
                f"{k}_ratio": (None if v is None else round(v["peak_mb"] / dm, 3))
                for k, v in mem.items()
                if k != "digital"
            },
        }
    print(
        f"model {a.model}, batch {a.batch}, {out['crossbar']} tiles, {dev}, "
        f"{a.threads} threads, {out['clock']} clock (median of {a.repeat})"
    )
    print(f"  digital forward          {1e3 * d:9.2f} ms")
    for k, label, target in (
        ("weight_level", "analog, weight-level", 1.1),
        ("tile_adc", "analog, per-tile ADC", 2.0),
        ("aihwkit_default", "aihwkit-default preset", 2.0),
        ("batched10", f"{K} trials, batched", 6.0),
        ("sequential10", f"{K} trials, one by one", None),
    ):
        v = res[f"{k}_s"]
        if v is None:
            print(f"  {label:24s}   (preset {AIHWKIT_PRESET!r} not available)")
            continue
        tgt = f"; target <= {target}x" if target else ""
        print(f"  {label:24s} {1e3 * v:9.2f} ms  ({out[f'{k}_ratio']:.2f}x digital{tgt})")
    if out["peak_mem_mb"]:
        pm = out["peak_mem_mb"]
        print(f"  peak memory of one trial, {pm['model']} (above the pre-trial baseline):")
        for k in ("digital", "weight", "adc", "aihwkit"):
            if pm[k] is not None:
                r = "" if k == "digital" else f"  ({pm[f'{k}_ratio']:.2f}x digital; target <= 2x)"
                print(
                    f"    {k:8s} {pm[k]['peak_mb']:9.1f} MB (total {pm[k]['total_mb']:.0f} MB){r}"
                )
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
