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
    md = "\n".join(evaluations_markdown(rows, {"weight-robustness": WeightRobustness.description}))
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
    pts, secs, hit = _cached_evaluation(run, spec)
    assert pts == stored["points"] and secs == stored["seconds"]  # read back, not recomputed
    assert hit is True
    spec["params"] = {"bits": [4], "sigma": [0.1]}
    pts2, _, hit = _cached_evaluation(run, spec)
    assert hit is False
    assert [(p["bits"], p["sigma"]) for p in pts2] == [(4, 0.1)]
    assert json.loads(cache.read_text())["record"]["evaluation"]["params"] == spec["params"]
    spec["trials"] = 5
    pts3, _, _ = _cached_evaluation(run, spec)
    assert len(pts3[0]["per_trial"]) == 5
    # the same config with another model in the arm (its stages recomputed): measured again
    ft = Path(arm.dir) / "stages" / "finetune.pt"
    ck = torch.load(ft, weights_only=True)
    ck["model"] = {k: torch.zeros_like(v) for k, v in ck["model"].items()}
    torch.save(ck, ft)
    pts4, _, hit = _cached_evaluation(run, spec)
    assert hit is False
    assert pts4 != pts3
    assert all(len(set(p["per_trial"])) == 1 for p in pts4)  # a constant model: no chip differs
    # so are the preset simulations and the validation accuracy (the same digest record)
    from xbarprune.experiment.bench import _cached_simulation, _cached_val_accuracy

    sim = json.loads((Path(arm.dir) / "bench_sim" / "reram.json").read_text())
    again, _, hit = _cached_simulation(run, "reram")
    assert hit is False
    assert again != sim["result"]
    per_trial = again["compressed"]["nonideal"][0]["per_trial"]
    assert len(set(per_trial)) == 1  # a zero model: every chip predicts the same class
    acc, _, hit = _cached_val_accuracy(run)
    assert hit is False
    assert acc == json.loads((Path(arm.dir) / "bench_val.json").read_text())["acc_val"]
    # all-zero weights and biases: every logit 0, argmax class 0 for every image
    labels = [int(run.splits.val[i][1]) for i in range(len(run.splits.val))]
    assert acc == pytest.approx(labels.count(0) / len(labels))


# ---------------------------------------------------------------- ADMM steps (Ma et al. Table 1)
ADMM_RUN = {
    "name": "admm-steps",
    "seed": 0,
    "model": {"name": "lenet5-caffe", "width": 0.3},
    "data": {
        "name": "mnist-embedded",
        "train_subset": 300,
        "test_subset": 200,
        "val_size": 0.2,
        "batch_size_eval": 200,
    },  # fmt: skip
    "train": {"epochs": 1, "batch_size": 50, "progress": False},
    "finetune": {"epochs": 0, "batch_size": 50, "lr": 0.002, "progress": False},
    "crossbar": {"rows": 16, "cols": 16, "cells_per_weight": 2},
    "device": {"levels": 16},
    "method": {
        "name": "admm",
        "params": {
            "kind": "filter",
            "iterations": 2,
            "alpha": {"features.conv1": 2, "features.conv2": 5},
        },
    },  # fmt: skip
    "evaluate": {"times": ["1s"], "trials": 1, "seed": 0},
    "runtime": {"device": "cpu", "threads": 1},
}


def test_admm_steps_are_the_methods_own_models(tmp_path):
    """`admm` keeps each step's model in the run (stale steps removed); the `admm-steps`
    plug-in measures them: each step's conv compression equals the method's own record of it
    (two code paths), the last step is the model the pipeline goes on with, weight for weight,
    and its accuracy is that model's ideal test accuracy."""
    from xbarprune.compress.methods.admm import STAGES_DIR

    stale = tmp_path / "run" / "stages" / STAGES_DIR / "9_stale.pt"
    stale.parent.mkdir(parents=True)
    torch.save({"tag": "stale"}, stale)
    run = Run(load_config(copy.deepcopy(ADMM_RUN)), tmp_path / "run", log=lambda s: None)
    rep = run.run()
    files = sorted(p.name for p in stale.parent.glob("*.pt"))
    assert files == ["1_admm.pt", "2_admm+prm.pt", "3_admm+prm+quant.pt"]
    pts, _, _ = _cached_evaluation(run, {"name": "admm-steps", "label": "admm-steps",
                                         "params": {}, "trials": None})  # fmt: skip
    assert [p["step"] for p in pts] == ["admm", "admm+prm", "admm+prm+quant"]
    own = rep["method"]["info"]["compression"]
    for p in pts:
        assert p["metrics"]["compression_conv"] == pytest.approx(own[p["step"]]["compression_conv"])
        assert 0 < p["metrics"]["crossbar_saving"] < 1
    # conv1 keeps 2 filters and conv2 5 of 15 (x3 conv compression after the ADMM step)
    assert pts[0]["metrics"]["compression_conv"] == pytest.approx(3.0)
    last = torch.load(stale.parent / "3_admm+prm+quant.pt", weights_only=True)["model"]
    ft = torch.load(tmp_path / "run" / "stages" / "finetune.pt", weights_only=True)
    _d, comp, _dl, _cl, _ck = run.models()
    assert "architecture" not in ft  # the pipeline's model is not physically shrunk
    for k, v in comp.state_dict().items():
        assert torch.equal(v, last[k]), k
    assert pts[-1]["per_trial"] == [rep["accuracy"]["compressed_ideal"]]
    # an admm arm compressed before the steps were kept: one clear error, naming the fix
    for f in stale.parent.glob("*.pt"):
        f.unlink()
    (tmp_path / "run" / "bench_eval").rename(tmp_path / "old_eval")
    with pytest.raises(ConfigError, match="no saved ADMM steps.*remove its stages/compress.pt"):
        _cached_evaluation(run, {"name": "admm-steps", "label": "admm-steps", "params": {},
                                 "trials": None})  # fmt: skip


def test_admm_steps_of_another_method_give_no_points(mini_eval):
    out, data, _summary = mini_eval
    arm = next(a for a in plan_arms(load_bench(data), out) if a.budget == 0.4)
    run = Run(load_config(arm.config), arm.dir, log=lambda s: None)
    spec = {"name": "admm-steps", "label": "admm-steps", "params": {}, "trials": None}
    assert _cached_evaluation(run, spec)[0] == []


def test_evaluation_pairs_by_hand():
    """a − b on each point, paired by budget and seed; a method without b's budget pairs with
    b's dense arm; a point that one arm lacks is left out."""
    from xbarprune.experiment.bench import evaluation_pairs, evaluation_pairs_markdown

    def rec(method, budget, seed, accs):
        pts = [{"bits": 4, "sigma": s, "per_trial": t} for s, t in accs.items()]
        return {"method": method, "budget": budget, "seed": seed,
                "evaluations": {"weight-robustness": pts}}  # fmt: skip

    recs = [
        rec("a", 0.5, 0, {0.0: [0.9], 0.1: [0.8, 0.6]}),
        rec("a", 0.5, 1, {0.0: [0.8], 0.1: [0.7, 0.7]}),
        rec("b", 0.5, 0, {0.0: [0.85], 0.1: [0.5, 0.5]}),
        rec("b", 0.5, 1, {0.0: [0.9], 0.1: [0.6, 0.6]}),
        rec("none", None, 0, {0.1: [0.9, 0.9]}),
        rec("none", None, 1, {0.1: [0.8, 0.8]}),
    ]
    out = evaluation_pairs(recs, [("a", "b"), ("a", "none")])
    ab = {c["sigma"]: c for c in out if c["b"] == "b"}
    assert ab[0.1]["diff_per_seed"] == pytest.approx([0.2, 0.1])
    assert ab[0.1]["diff_mean"] == pytest.approx(0.15)
    # t_{0.975, 1} = 12.7062; s = 0.0707107; half-width = t s / sqrt(2)
    assert ab[0.1]["diff_ci95"] == pytest.approx(12.7062 * 0.0707107 / math.sqrt(2), rel=1e-4)
    assert ab[0.0]["diff_per_seed"] == pytest.approx([0.05, -0.1])
    dense = [c for c in out if c["b"] == "none"]
    assert len(dense) == 1  # sigma 0 is not measured on the dense arm
    assert (dense[0]["budget"], dense[0]["budget_b"], dense[0]["sigma"]) == (0.5, None, 0.1)
    assert dense[0]["diff_per_seed"] == pytest.approx([-0.2, -0.1])
    md = "\n".join(evaluation_pairs_markdown(out))
    assert "| weight-robustness | a | b | 0.5 | 4 | 0.1 | +15.00 ± 63.53 | 2 |" in md
    assert "| weight-robustness | a | none | 0.5 / – | 4 | 0.1 | -15.00 ± 63.53 | 2 |" in md
