"""The Ma et al. reproduction (kind: admm): quick end to end on the embedded data with the
numbers it must report exactly; the full run is marked slow."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from xbarprune.config import load_yaml
from xbarprune.errors import ConfigError
from xbarprune.experiment.admm_compare import admm_study

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "admm.yaml"
FIELDS = (
    "model", "dataset", "method", "bits", "compression_conv", "compression_total",
    "acc_ideal", "acc_nonideal_mean", "acc_nonideal_std", "trials", "crossbar",
    "crossbars_dense", "crossbars_compressed", "area_mm2_dense", "area_mm2_compressed",
)  # fmt: skip


def _quick_config() -> dict:
    data = copy.deepcopy(load_yaml(CONFIG))
    data.pop("kind")
    data["experiments"][0]["data"] = {"name": "mnist-embedded", "val_size": 0.1}
    return data


def test_quick_study_end_to_end(tmp_path):
    summary = admm_study(_quick_config(), out=str(tmp_path), quick=True, command="t", t0=0.0)
    rows = summary["rows"]
    by = {(r["arm"], r["method"], r["nonideal"]): r for r in rows}
    methods = {(r["arm"], r["method"]) for r in rows}
    assert methods == {
        ("dense", "dense"),
        ("admm-25x", "admm"),
        ("admm-25x", "admm+prm"),
        ("admm-25x", "admm+prm+quant"),
        ("magnitude-100x", "magnitude"),
        ("magnitude-100x", "magnitude+prm"),
        ("magnitude-100x", "magnitude+prm+quant"),
    }
    for r in rows:
        for f in FIELDS:
            assert f in r, f
        assert r["trials"] == 2
        assert r["crossbar"] == "32x32"
        # Caffe LeNet: 20*25 + 50*500 = 25,500 conv weights; fc 800*500 + 500*10
        assert r["conv_weights"] == 25_500 and r["weights"] == 25_500 + 405_000
    # alpha: conv1 filters of 25 weights + conv2 filter shapes of 50 weights
    for arm, kept in (("admm-25x", 10 * 25 + 15 * 50), ("magnitude-100x", 4 * 25 + 3 * 50)):
        label = arm.split("-")[0]
        # intermediate steps: ideal only (no Monte Carlo rows)
        pruned = by[(arm, label, None)]
        assert pruned["acc_nonideal_mean"] is None
        assert pruned["conv_nonzero"] == kept
        assert pruned["compression_conv"] == pytest.approx(25_500 / kept)
        prm = by[(arm, f"{label}+prm", None)]
        assert prm["compression_conv"] >= pruned["compression_conv"]
        quant = by[(arm, f"{label}+prm+quant", "paper")]
        assert quant["bits"] == 8 and pruned["bits"] == 32
        assert quant["conv_nonzero"] == prm["conv_nonzero"]  # quantisation never zeroes a weight
        # the level set is the crossbar's: 4-bit cell quantisation leaves the quantised model
        # exactly as it is (every trial equals the ideal accuracy)
        assert quant["acc_nonideal_trials"] == [quant["acc_ideal"]] * 2
        assert quant["acc_nonideal_std"] == 0
        # conv layers on 32x32 tiles with 8 weights per row (2 cells x 2 signs): conv1 25x20 -> 1x3,
        # conv2 500x50 -> 16x7; pruned they shrink to a few crossbars
        assert quant["crossbars_conv_dense"] == 115
        assert quant["crossbars_conv"] < 20
        assert 0 < quant["area_saving"] < quant["area_saving_conv"] < 1
        upr = quant["upr"]
        assert upr["max_output_difference"] < 1e-4
        assert upr["weights_after"] < upr["weights_before"]
    dense = by[("dense", "dense", "reram-cells")]
    assert dense["compression_conv"] == 1.0 and dense["crossbars_compressed"] == 1722
    md = (tmp_path / "summary.md").read_text()
    assert "231.82×" in md and "## Target" in md


def test_bad_arm_is_rejected_before_training(tmp_path):
    data = _quick_config()
    data["arms"]["bad"] = {"alpha": {"features.conv1": 0}}
    with pytest.raises(Exception, match="alpha"):
        admm_study(data, out=str(tmp_path), quick=False, command="t", t0=0.0)
    data = _quick_config()
    data["nonideal"] = "reram"
    with pytest.raises(ConfigError, match="nonideal"):
        admm_study(data, out=str(tmp_path), quick=False, command="t", t0=0.0)
    assert not any((tmp_path / "work").glob("*/dense.pt"))


@pytest.mark.slow
def test_full_reproduction(tmp_path):  # ~40 min on 2 CPU cores; needs ../shared/data
    data = copy.deepcopy(load_yaml(CONFIG))
    data.pop("kind")
    data["experiments"][0]["data"]["root"] = str(ROOT.parent / "shared" / "data")
    summary = admm_study(data, out=str(tmp_path), quick=False, command="test", t0=0.0)
    ok = [
        r
        for r in summary["rows"]
        if r["method"] == "admm+prm+quant"
        and r["compression_conv"] >= 100
        and r["acc_ideal"] >= 0.98
    ]
    assert ok


def test_hardware_preset_expands_into_crossbar_and_device():
    from xbarprune.experiment.config import load_config
    from xbarprune.hardware.presets import resolve_hardware

    cfg = load_config({"hardware": "ma2020", "crossbar": {"rows": 64}})
    assert (cfg.crossbar.rows, cfg.crossbar.cols, cfg.crossbar.cells_per_weight) == (64, 64, 2)
    assert cfg.device.g_max == pytest.approx(1e-6) and cfg.device.g_min == pytest.approx(1e-7)
    assert cfg.device.levels == 16
    assert resolve_hardware({"x": 1}) == {"x": 1}
    with pytest.raises(ConfigError, match="unknown hardware preset 'isaac'"):
        load_config({"hardware": "isaac"})
