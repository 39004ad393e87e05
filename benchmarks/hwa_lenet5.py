"""Single-seed check of hardware-aware fine-tuning (issue #17; not the 3-seed study).

The LeNet-5 of ``vs_aihwkit.py --trained`` (trained on the embedded MNIST subset, checkpoint
under ``runs/vs_aihwkit/``) is fine-tuned twice from the same weights for ``--epochs`` at
``--lr``: plainly, and with ``finetune.hwa = {preset: aihwkit-default, weight_noise: 0.02}``.
Both are evaluated digitally and under ``aihwkit-default`` at 1 day and 1 year (``--trials``
trials, the first ``--test`` test images). The last line is a JSON object.

    python benchmarks/hwa_lenet5.py [--epochs 1] [--lr 5e-4] [--trials 10] [--test 1000]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_aihwkit as V  # noqa: E402

from xbarprune.analog import trial_generator  # noqa: E402
from xbarprune.data import load_splits  # noqa: E402
from xbarprune.training.hwa import HWAConfig  # noqa: E402
from xbarprune.training.loop import TrainConfig, train  # noqa: E402

TIMES = {"1d": 86400.0, "1y": 365.25 * 86400.0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, x, y, src = V.trained_lenet5(a.seed, 3)
    x, y = x[: a.test], y[: a.test]
    data = load_splits("mnist-embedded", seed=a.seed)
    hwa = HWAConfig(preset="aihwkit-default", weight_noise=0.02)
    out = {"weights": src, "epochs": a.epochs, "lr": a.lr, "trials": a.trials, "test": len(x)}
    for name, h in (("plain", None), ("hwa", hwa)):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        cfg = TrainConfig(epochs=a.epochs, lr=a.lr, progress=False, hwa=h)
        train(m, data.train, cfg, seed=a.seed + 1)
        res = {"train_s": time.perf_counter() - t0, "digital": V._acc(m.eval(), x, y)}
        am = V.ours_model(m, name="aihwkit-default")
        with torch.no_grad():
            for k, t in TIMES.items():
                accs = []
                for i in range(a.trials):
                    am.program(trial_generator(a.seed, i), time_s=t)
                    accs.append(V._acc(am, x, y))
                res[k] = sum(accs) / len(accs)
        out[name] = res
        print(name, res, flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
