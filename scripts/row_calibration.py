"""Per-tile-row input gains on top of the column calibration, on the sparse_nonideal models.

Loads the models cached by ``xbarprune compare examples/sparse_nonideal.yaml`` (same data,
layouts and C/F removal as the study) and evaluates each (no mitigation) under the study's
non-ideality preset with column calibration only (the study's setting) and with
``row_calibration: true`` as well, same trials and seeds. Prints a table and, with ``--json``,
a JSON line.

    python scripts/row_calibration.py [--config examples/sparse_nonideal.yaml]
        [--experiment 0] [--sizes 32 64] [--trials 10] [--json]
        [--out results/sparse_nonideal/row_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from xbarprune.analog.parasitics import RRAM_DATE22
from xbarprune.analog.simulate import evaluate
from xbarprune.compress.methods.structured import StructuredParams
from xbarprune.compress.methods.wct import WCTParams
from xbarprune.config import from_dict, load_yaml
from xbarprune.experiment.config import DataConfig, ModelConfig
from xbarprune.experiment.sparse_nonideal_compare import _Experiment, _section
from xbarprune.hardware.nonideal.model import NonIdealityModel, preset
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.training.loop import TrainConfig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="examples/sparse_nonideal.yaml")
    ap.add_argument("--experiment", type=int, default=0, help="index into experiments[]")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="also write the result (JSON, command and wall time first)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(a.threads)
    data = load_yaml(a.config)
    e = data["experiments"][a.experiment]
    mc = from_dict(ModelConfig, e["model"], "model")
    dc = from_dict(DataConfig, e["data"], "data")
    base = preset(data.get("nonideal", "sparse_nonideal"))
    models = {
        "columns": NonIdealityModel.from_config(base),
        "rows+columns": NonIdealityModel.from_config(replace(base, row_calibration=True)),
    }
    out_dir = data.get("out", "results/sparse_nonideal")
    params = from_dict(StructuredParams, data.get("params") or {}, "params")
    wct = from_dict(WCTParams, data.get("wct") or {}, "wct")
    run = _Experiment(  # the study's cached models (nothing is retrained when they exist)
        mc, dc, int(data.get("seed", 0)), _section(data, "train", TrainConfig),
        _section(data, "finetune", TrainConfig, TrainConfig(epochs=1)),
        _section(data, "device", DeviceSpec, RRAM_DATE22), models["columns"], a.trials,
        int(data.get("eval_seed", 0)), params, wct, (), {"calib": 32},
        data.get("layers", "conv"), Path(out_dir) / "work" / f"{mc.name}_{dc.name}",
        torch.device("cpu"),
    )  # fmt: skip
    cases = [("dense", 0.0)] + [(k, float(s)) for k, v in data["schemes"].items() for s in v]
    rows = []
    print(f"{mc.name} {dc.name}: accuracy % (mean ± std of {a.trials} trials), no mitigation")
    for size in a.sizes:
        for scheme, s in cases:
            model, layout, clip = run.prepared(size, scheme, s, wct=False)
            rec = {"crossbar": f"{size}x{size}", "scheme": scheme, "sparsity_target": s}
            for name, ni in models.items():
                t = time.perf_counter()
                res = evaluate(model, run.test, layout, run.dev, ni, trials=a.trials,
                               seed=run.eval_seed, device="cpu", weight_clip=clip)[0]  # fmt: skip
                rec[name] = {"mean": res.mean, "std": res.std,
                             "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
            rows.append(rec)
            c, r = rec["columns"], rec["rows+columns"]
            print(f"  {rec['crossbar']} {scheme:5s} {s:4g}  columns {100 * c['mean']:5.2f} ± "
                  f"{100 * c['std']:4.2f}   rows+columns {100 * r['mean']:5.2f} ± "
                  f"{100 * r['std']:4.2f}", flush=True)  # fmt: skip
    res = {"model": mc.name, "dataset": dc.name, "trials": a.trials, "rows": rows}
    if a.out:
        import sys

        from xbarprune.io import atomic_write_json

        head = {
            "command": "python scripts/row_calibration.py " + " ".join(sys.argv[1:]),
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "threads": a.threads,
            "note": "no mitigation; the study's preset with column calibration only (its "
            "'none' rows) against row_calibration added; same trials and seeds",
        }
        atomic_write_json(Path(a.out), {**head, **res})
    if a.json:
        print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
