"""Evaluation plug-ins of the benchmark engine (issue #21): Liang et al. 2018 Fig. 12 as the
`weight-robustness` plug-in, equal to a direct simulation; its rows aggregate seeds by hand;
its cache is reused and rebuilt; bad configs name the field."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from test_bench import MINI
from xbarprune.analog.simulate import evaluate
from xbarprune.errors import ConfigError
from xbarprune.experiment.bench import (
    _cached_evaluation,
    evaluation_rows,
    evaluations_markdown,
    load_bench,
    plan_arms,
    run_bench,
)
from xbarprune.experiment.config import load_config
from xbarprune.experiment.evaluations import (
    EvalContext,
    WeightRobustness,
    WeightRobustnessParams,
    get_evaluation,
    robustness_model,
)
from xbarprune.experiment.pipeline import Run
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.mapping.layout import map_model


def _linear(weight: list[list[float]]) -> nn.Module:
    m = nn.Sequential(nn.Linear(len(weight[0]), len(weight), bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor(weight))
    return m.eval()


def test_two_bit_weights_round_to_zero_or_full_scale_by_hand():
    """bits = 2: one device level besides 0, so every |w| rounds to 0 or max|w| = 1.
    W = [[1, 0.4], [-0.6, 0.2]] -> [[1, 0], [-1, 0]]. With x = (0.2, 1) the float model says
    class 0 (0.6 > 0.08) and so does the quantised one (0.2 > -0.2); with x = (-0.1, 1) the
    float model says class 0 (0.3 > 0.26) but the quantised one says class 1 (-0.1 < 0.1)."""
    model = _linear([[1.0, 0.4], [-0.6, 0.2]])
    layout = map_model(model, CrossbarSpec(rows=4, cols=4, encoding="differential"))
    x = torch.tensor([[0.2, 1.0], [-0.1, 1.0]])
    y = torch.tensor([0, 0])
    ctx = EvalContext(model, layout, DeviceSpec(), [(x, y)], trials=3, seed=0,
                      calibration=x)  # fmt: skip
    pts = WeightRobustness().measure(ctx, WeightRobustnessParams(bits=(2, 8), sigma=(0.0,)))
    assert [(p["bits"], p["sigma"]) for p in pts] == [(2, 0.0), (8, 0.0)]
    assert pts[0]["per_trial"] == [0.5]  # the second image flips; one trial: no randomness
    assert pts[1]["per_trial"] == [1.0]  # 8 bits keep both decisions


def test_weight_robustness_equals_a_direct_simulation():
    """Each point is `evaluate` under `robustness_model(bits, σ)` with the context's trials
    and seed (σ > 0) or one trial (σ = 0): the plug-in and the direct call agree exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    layout = map_model(model, CrossbarSpec(rows=8, cols=8, encoding="differential"))
    x = torch.randn(64, 16)
    y = model(x).argmax(1)
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    ctx = EvalContext(model, layout, DeviceSpec(), data, trials=4, seed=7, calibration=x[:8])
    params = WeightRobustnessParams(bits=(3, 5), sigma=(0.0, 0.3))
    pts = WeightRobustness().measure(ctx, params)
    assert len(pts) == 4
    for p in pts:
        dev, ni = robustness_model(p["bits"], p["sigma"])
        direct = evaluate(model, data, layout, dev, ni, trials=4 if p["sigma"] else 1, seed=7,
                          calibration=x[:8])[0].per_trial  # fmt: skip
        assert p["per_trial"] == direct
    by = {(p["bits"], p["sigma"]): p["per_trial"] for p in pts}
    assert len(by[(3, 0.3)]) == 4 and len(by[(3, 0.0)]) == 1
    assert len(set(by[(3, 0.3)])) > 1  # the variation draws differ between chips


def test_evaluation_rows_aggregate_seeds_by_hand():
    recs = [
        {
            "method": "a",
            "budget": 0.5,
            "seed": s,
            "crossbar_saving": sv,
            "evaluations": {
                "weight-robustness": [
                    {"bits": 4, "sigma": 0.1, "per_trial": trials},
                    {"bits": 4, "sigma": 0.0, "per_trial": [z]},
                ]
            },
        }  # fmt: skip
        for s, sv, trials, z in [
            (0, 0.6, [0.9, 0.7], 0.95),
            (1, 0.5, [0.6, 0.6], 0.85),
            (2, 0.7, [0.5, 0.7], 0.75),
        ]
    ]
    rows = evaluation_rows(recs)
    assert len(rows) == 2
    r = next(r for r in rows if r["sigma"] == 0.1)
    assert r["acc_per_seed"] == pytest.approx([0.8, 0.6, 0.6])
    assert r["acc_mean"] == pytest.approx(2.0 / 3.0)
    s = math.sqrt(((0.8 - 2 / 3) ** 2 + 2 * (0.6 - 2 / 3) ** 2) / 2)
    assert r["acc_ci95"] == pytest.approx(4.302653 * s / math.sqrt(3), rel=1e-6)
    assert r["crossbar_saving"] == pytest.approx(0.6)
    assert r["seeds"] == [0, 1, 2] and r["trials_per_seed"] == 2
    assert (r["bits"], r["budget"], r["method"]) == (4, 0.5, "a")
    z = next(r for r in rows if r["sigma"] == 0.0)
    assert z["acc_mean"] == pytest.approx(0.85) and z["trials_per_seed"] == 1
    md = "\n".join(evaluations_markdown(rows))
    assert "## Evaluation `weight-robustness`: Liang et al. 2018 Fig. 12" in md
    assert "| a | 0.5 | 60.00 | 4 | 0.1 | 66.67 ± 28.68 | 3 | 2 |" in md


def test_bad_evaluation_configs_name_the_field():
    def cfg(ev):
        return {**copy.deepcopy(MINI), "evaluations": ev}

    with pytest.raises(ConfigError, match=r"evaluations\[nope\]\.name = 'nope'; allowed: "):
        load_bench(cfg([{"name": "nope"}]))
    with pytest.raises(ConfigError, match=r"params.bits = 1; allowed: integers in \[2, 16\]"):
        load_bench(cfg([{"name": "weight-robustness", "params": {"bits": [1]}}]))
    with pytest.raises(ConfigError, match="sigma"):
        load_bench(cfg([{"name": "weight-robustness", "params": {"sigma": [-0.1]}}]))
    with pytest.raises(ConfigError, match="bitz"):
        load_bench(cfg([{"name": "weight-robustness", "params": {"bitz": [4]}}]))
    with pytest.raises(ConfigError, match=r"methods: 'lgd' is not a method label"):
        load_bench(cfg([{"name": "weight-robustness", "methods": ["lgd"]}]))
    with pytest.raises(ConfigError, match="repeat"):
        load_bench(cfg([{"name": "weight-robustness"}, {"name": "weight-robustness"}]))
    with pytest.raises(ConfigError, match=r"trials = 0; allowed"):
        load_bench(cfg([{"name": "weight-robustness", "trials": 0}]))
    assert get_evaluation("weight-robustness").name == "weight-robustness"


def test_only_the_listed_methods_get_the_evaluation(tmp_path):
    data = {**copy.deepcopy(MINI),
            "evaluations": [{"name": "weight-robustness", "methods": ["none"],
                             "params": {"bits": [4], "sigma": [0.1]}}]}  # fmt: skip
    arms = plan_arms(load_bench(data), tmp_path)
    assert [a.method for a in arms if a.evaluations] == ["none"]
    dense = next(a for a in arms if a.evaluations)
    assert dense.evaluations == (
        {
            "name": "weight-robustness",
            "label": "weight-robustness",
            "params": {"bits": [4], "sigma": [0.1]},
            "trials": None,
        },
    )


@pytest.fixture(scope="module")
def mini_eval(tmp_path_factory):
    """The engine's mini bench with the Fig. 12 plug-in on every arm (a fresh directory)."""
    out = tmp_path_factory.mktemp("bench_eval")
    data = {**copy.deepcopy(MINI),
            "evaluations": [{"name": "weight-robustness", "trials": 3,
                             "params": {"bits": [3, 8], "sigma": [0.0, 0.2]}}]}  # fmt: skip
    summary = run_bench(data, out=str(out), log=lambda s: None)
    return out, data, summary


def test_the_engine_measures_each_arm_like_the_plugin_on_its_model(mini_eval):
    """Through the engine, an arm's points equal the plug-in run by hand on that arm's
    compressed model and layout, the test split and the calibration images; the summary has one
    row per (method, budget, point) and the tables."""
    out, data, summary = mini_eval
    arm = next(a for a in plan_arms(load_bench(data), out) if a.budget == 0.7)
    run = Run(load_config(arm.config), arm.dir, log=lambda s: None)
    _d, comp, _dl, cl, _ck = run.models()
    ctx = EvalContext(comp, cl, run.cfg.device, run.test_loader(), trials=3,
                      seed=run.cfg.evaluate.seed, times_s=tuple(run.cfg.evaluate.times_s),
                      calibration=run.calibration_images())  # fmt: skip
    by_hand = WeightRobustness().measure(ctx, WeightRobustnessParams(bits=(3, 8),
                                                                     sigma=(0.0, 0.2)))  # fmt: skip
    rec = next(r for r in summary["records"] if r["key"] == arm.key)
    assert rec["evaluations"]["weight-robustness"] == by_hand
    rows = summary["evaluations"]
    assert len(rows) == 3 * 4  # none, 0.4, 0.7 x (2 bits x 2 sigma)
    row = next(r for r in rows if r["budget"] == 0.7 and r["bits"] == 3 and r["sigma"] == 0.2)
    pt = next(p for p in by_hand if p["bits"] == 3 and p["sigma"] == 0.2)
    assert row["acc_per_seed"] == [pytest.approx(sum(pt["per_trial"]) / 3)]
    assert row["acc_ci95"] is None  # one seed: no interval
    assert "## Evaluation `weight-robustness`" in (out / "summary.md").read_text()
    assert "Evaluation weight-robustness" in (out / "report.html").read_text()


def test_an_evaluation_is_cached_and_recomputed_when_its_params_change(mini_eval, tmp_path):
    src, data, _summary = mini_eval
    out = shutil.copytree(src, tmp_path / "bench", copy_function=shutil.copy2)
    arm = next(a for a in plan_arms(load_bench(data), out) if a.budget == 0.4)
    run = Run(load_config(arm.config), arm.dir, log=lambda s: None)
    spec = dict(arm.evaluations[0])
    cache = Path(arm.dir) / "bench_eval" / "weight-robustness.json"
    stored = json.loads(cache.read_text())
    pts, secs = _cached_evaluation(run, spec)
    assert pts == stored["points"] and secs == stored["seconds"]  # read back, not recomputed
    spec["params"] = {"bits": [4], "sigma": [0.1]}
    pts2, _ = _cached_evaluation(run, spec)
    assert [(p["bits"], p["sigma"]) for p in pts2] == [(4, 0.1)]
    assert json.loads(cache.read_text())["record"]["evaluation"]["params"] == spec["params"]
    spec["trials"] = 5
    pts3, _ = _cached_evaluation(run, spec)
    assert len(pts3[0]["per_trial"]) == 5
