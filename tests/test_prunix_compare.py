"""The PRUNIX comparison on the benchmark engine (examples/prunix_compare.yaml, issue #21):
quick end to end on the embedded data, the `prunix-levels` evaluation against a direct
computation, the final fine-tune with the arm's own regulariser against a direct training, the
"best other arm" target; the full run is marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xbarprune.compress.methods.prunix import Prunix, PrunixParams, level_grid
from xbarprune.compress.parts.sawtooth import GroupSawtooth, on_level_fraction
from xbarprune.config import load_yaml
from xbarprune.errors import ConfigError
from xbarprune.experiment.bench import TargetSpec, run_bench, select_targets
from xbarprune.experiment.compare import run_compare
from xbarprune.experiment.pipeline import Run
from xbarprune.io import load_checkpoint, load_state_into
from xbarprune.training.loop import train
from xbarprune.training.masks import MaskSet

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "prunix_compare.yaml"
# LeNet-5 weights per layer: conv1 150, conv2 2400, fc1 48000, fc2 10080, fc3 840
N = {"features.conv1": 150, "features.conv2": 2400, "classifier.fc1": 48000,
     "classifier.fc2": 10080, "classifier.fc3": 840}  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("prunix")
    run_compare(CONFIG, out=str(out), quick=True, sets=["workers=1"])
    return out, json.loads((out / "lenet5-fashion" / "summary.json").read_text())


def _arm(out: Path, method: str) -> Path:
    return out / "lenet5-fashion" / "work" / method / "default" / "s0"


def test_quick_study_end_to_end(quick):
    out, summary = quick
    recs = {r["method"]: r for r in summary["records"]}
    assert set(recs) == {"none", "prunix", "none+apa", "none+uniform", "group_sawtooth+uniform"}
    assert {r["nonideal"] for r in summary["rows"]} == {"prunix"}
    for name, r in recs.items():
        # LeNet-5 on 64 x 64 differential tiles (32 weights per row), by hand: conv1 25x6 -> 1,
        # conv2 150x16 -> 3, fc1 400x120 -> 7*4, fc2 120x84 -> 2*3, fc3 84x10 -> 2*1
        assert r["crossbars_dense"] == 1 + 3 + 28 + 6 + 2
        assert r["crossbar_saving"] == pytest.approx(1 - r["crossbars_compressed"] / 40)
        assert len(r["nonideal"]["prunix"]["1y"]) == 2
        pts = r["evaluations"]["prunix-levels"]
        net = next(p for p in pts if p["layer"] == "(network)")
        assert net["per_trial"] == [r["acc_ideal"]]  # the digital test accuracy
        if name == "none":
            continue
        m = net["metrics"]
        assert 0.85 <= m["weight_sparsity"] <= 0.86  # the common target, tile-column grain
        layers = {p["layer"]: p["metrics"]["sparsity"] for p in pts if p["layer"] != "(network)"}
        assert set(layers) == set(N)
        overall = sum(N[k] * layers[k] for k in N) / sum(N.values())
        assert overall == pytest.approx(m["weight_sparsity"], abs=1e-4)
        if name.endswith("uniform"):  # every layer to the target (tile-column grain)
            assert all(abs(s - 0.85) < 0.08 for s in layers.values())
        else:  # APA allocated: the layers differ, within s_max, and the record shows the choice
            assert len({round(s, 3) for s in layers.values()}) > 2
            assert max(layers.values()) <= 0.97 + 1e-6  # s_max (float32 sparsity)
            ratios = {k[6:]: v for k, v in r["method_metrics"].items() if k.startswith("ratio:")}
            # the allocation is a target; whole tile columns are pruned (fc3: one group is 64
            # of its 840 weights, 7.6 %)
            assert ratios == pytest.approx(layers, abs=0.08)
        # pruned weights stay exactly zero through the final fine-tune (masks fixed)
        st = _arm(out, name) / "stages"
        masks = load_checkpoint(st / "compress.pt")["masks"]
        tuned = load_checkpoint(st / "finetune.pt")["model"]
        for layer, mask in masks.items():
            assert torch.all(tuned[f"{layer}.weight"][~mask.bool()] == 0), layer
    md = (out / "lenet5-fashion" / "summary.md").read_text()
    assert "+13 %" in md and "## Targets" in md and "prunix-levels" in md


def test_prunix_levels_equal_a_direct_computation(quick):
    """The plug-in's on-level fractions are `on_level_fraction` on the arm's compressed and
    fine-tuned models, on the simulator's grid of the arm's preset."""
    out, summary = quick
    rec = next(r for r in summary["records"] if r["method"] == "prunix")
    run = Run.open(_arm(out, "prunix"))
    _dense, comp, _dl, layout, _ck = run.models()
    n_levels, units = level_grid(layout.crossbar, run.cfg.device, run.cfg.nonideal_model())
    before = run.build_model()
    load_state_into(before, load_checkpoint(run.dir / "stages" / "compress.pt")["model"], "c")
    m = next(p for p in rec["evaluations"]["prunix-levels"] if p["layer"] == "(network)")
    m = m["metrics"]
    assert m["on_level_after_final"] == on_level_fraction(comp, layout, n_levels, units=units)
    assert m["on_level_before_final"] == on_level_fraction(before, layout, n_levels, units=units)
    # the sawtooth pulled weights onto the levels: well above the dense model's share
    dense = next(r for r in summary["records"] if r["method"] == "none")
    d = next(p for p in dense["evaluations"]["prunix-levels"] if p["layer"] == "(network)")
    assert m["on_level_before_pruning"] > d["metrics"]["on_level_after_final"] + 0.05


def test_final_finetune_trains_with_the_arms_own_regulariser(quick):
    """`final_regularizer: true`: the pipeline's fine-tune equals a direct training of the
    compressed model with the arm's group sawtooth (same seed, masks, config); without the
    regulariser the same training gives other weights."""
    out, _summary = quick
    run = Run.open(_arm(out, "prunix"))
    assert run.cfg.method.params["final_regularizer"] is True

    def direct(with_reg: bool) -> dict[str, torch.Tensor]:
        model, ck = run._load_model("compress")
        masks = MaskSet(ck["masks"])
        reg = None
        if with_reg:
            reg = run._method().finetune_regularizer(run._compress_context(model, run.map(model)))
            assert isinstance(reg, GroupSawtooth)
        train(model, run.splits.train, run.cfg.finetune, device="cpu", val_data=run._val(),
              regularizer=reg, masks=masks, seed=run.cfg.seed + 1, desc="t")  # fmt: skip
        return model.state_dict()

    piped = load_checkpoint(run.dir / "stages" / "finetune.pt")["model"]
    kept = direct(True)
    for k in piped:
        torch.testing.assert_close(kept[k], piped[k], rtol=0, atol=0)
    plain = direct(False)
    assert any(not torch.equal(plain[k], piped[k]) for k in piped)


def test_finetune_regularizer_follows_the_parameter():
    params = PrunixParams(regularizer="l2", lam=3.0)
    assert Prunix(params).finetune_regularizer(None) is None  # default: plain fine-tune


def test_best_other_arm_target_is_the_highest_validation_accuracy(quick):
    _out, summary = quick
    spec = TargetSpec(label="best", methods=("none+apa", "none+uniform",
                                             "group_sawtooth+uniform"),
                      metric="acc_val", min_val_accuracy=0.0)  # fmt: skip
    [t] = select_targets(summary["records"], [spec])
    cands = [r for r in summary["records"] if r["method"] in spec.methods]
    best = max(cands, key=lambda r: r["acc_val"])
    assert t["per_seed"][0]["method"] == best["method"]
    assert t["per_seed"][0]["acc_val"] == best["acc_val"]
    assert t["per_seed"][0]["acc_ideal"] == best["acc_ideal"]  # test figure read after
    assert summary["targets"][0]["per_seed"][0]["method"] == best["method"]


def test_random_test_labels_leave_apa_and_the_target_unchanged(quick, tmp_path, random_test_labels):
    data = load_yaml(CONFIG)
    data["workers"] = 1
    data["quick"]["methods_only"] = ["prunix", "none+uniform"]
    data["targets"][0]["methods"] = ["prunix", "none+uniform"]
    run_bench(data, out=str(tmp_path), quick=True, log=lambda s: None)
    rand = json.loads((tmp_path / "lenet5-fashion" / "summary.json").read_text())
    _out, real = quick
    by_r = {r["method"]: r for r in real["records"]}
    for r in rand["records"]:
        assert r["acc_val"] == by_r[r["method"]]["acc_val"]
        assert r.get("method_metrics") == by_r[r["method"]].get("method_metrics")  # APA
    assert [r["acc_ideal"] for r in rand["records"]] != [
        by_r[r["method"]]["acc_ideal"] for r in rand["records"]
    ]
    spec = TargetSpec(**{**data["targets"][0], "methods": ("prunix", "none+uniform")})
    [t_real] = select_targets(real["records"], [spec])
    assert t_real["per_seed"][0]["method"] == rand["targets"][0]["per_seed"][0]["method"]


def test_bad_config_is_rejected_before_training(tmp_path):
    data = load_yaml(CONFIG)
    data["methods"][2]["params"] = {**data["methods"][2]["params"], "pruner": "random"}
    with pytest.raises(ConfigError, match="pruner"):  # quick: the embedded data, no data root
        run_bench(data, out=str(tmp_path), quick=True, log=lambda s: None)
    data = load_yaml(CONFIG)
    data["methods"][1]["params"] = {**data["methods"][1]["params"], "final_regularizer": 2}
    with pytest.raises(ConfigError, match="final_regularizer"):
        run_bench(data, out=str(tmp_path), quick=True, log=lambda s: None)
    data = load_yaml(CONFIG)
    data["evaluations"][0]["params"] = {"tol": 0.9}
    with pytest.raises(ConfigError, match="tol"):
        run_bench(data, out=str(tmp_path), quick=False, log=lambda s: None)
    assert not list(tmp_path.rglob("train.pt"))


@pytest.mark.slow
def test_full_comparison(tmp_path):  # ~1.5 h on 2 CPU cores; needs ../shared/data
    if not (ROOT.parent / "shared" / "data" / "fashion-mnist").exists():
        pytest.skip("needs ../shared/data")
    index = run_compare(CONFIG, out=str(tmp_path))
    assert [e["label"] for e in index["experiments"]] == [
        "lenet5-fashion",
        "lenet5-mnist",
        "vgg-small-fashion",
    ]
