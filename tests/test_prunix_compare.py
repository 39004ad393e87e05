"""The PRUNIX comparison end to end: quick on the embedded data (default), full (slow)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from xbarprune.config import load_yaml
from xbarprune.experiment.prunix_compare import prunix_study

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "prunix_compare.yaml"
FIELDS = (
    "model",
    "dataset",
    "regularizer",
    "pruner",
    "sparsity_weight",
    "crossbar_saving",
    "acc_ideal",
    "acc_nonideal_mean",
    "acc_nonideal_std",
    "trials",
    "drift_time_s",
)


def test_quick_comparison_runs_end_to_end(tmp_path):
    data = copy.deepcopy(load_yaml(CONFIG))
    data.pop("kind")
    # the quick run uses the embedded MNIST subset so it needs no data root
    data["experiments"] = [
        {"model": {"name": "lenet5"}, "data": {"name": "mnist-embedded", "val_size": 0.1}}
    ]
    data["train"]["epochs"] = 1
    summary = prunix_study(data, out=str(tmp_path), quick=True, command="test", t0=0.0)
    rows = summary["rows"]
    arms = {(r["regularizer"], r["pruner"]) for r in rows}
    assert arms == {
        ("none", "none (dense)"),
        ("none", "apa"),
        ("none", "uniform"),
        ("group_sawtooth", "apa"),
        ("group_sawtooth", "uniform"),
    }
    for r in rows:
        for f in FIELDS:
            assert f in r, f
        assert r["trials"] == 2
        t = r["acc_nonideal_trials"]
        assert len(t) == 2
        assert r["acc_nonideal_mean"] == pytest.approx((t[0] + t[1]) / 2)
        assert r["acc_nonideal_std"] == pytest.approx(abs(t[0] - t[1]) / 2**0.5)  # n - 1
        # LeNet-5 on 64 x 64 differential tiles (32 weights per row), by hand: conv1 25x6 -> 1,
        # conv2 150x16 -> 3, fc1 400x120 -> 7*4, fc2 120x84 -> 2*3, fc3 84x10 -> 2*1
        assert r["crossbars_dense"] == 1 + 3 + 28 + 6 + 2
        assert r["crossbar_saving"] == pytest.approx(1 - r["crossbars"] / r["crossbars_dense"])
    assert {r["drift_time_s"] for r in rows} == {1.0, 31557600.0}
    for arm in arms:  # the two drift times of an arm are the same chips and the same model
        a, b = [r for r in rows if (r["regularizer"], r["pruner"]) == arm]
        assert [a["drift_time_s"], b["drift_time_s"]] == [1.0, 31557600.0]
        for k in ("acc_ideal", "sparsity_weight", "crossbars"):
            assert a[k] == b[k], k
    dense = [r for r in rows if r["pruner"] == "none (dense)"]
    assert all(r["sparsity_weight"] == 0 and r["crossbar_saving"] == 0 for r in dense)
    # weights per layer: conv1 150, conv2 2400, fc1 48000, fc2 10080, fc3 840
    n = {"features.conv1": 150, "features.conv2": 2400, "classifier.fc1": 48000,
         "classifier.fc2": 10080, "classifier.fc3": 840}  # fmt: skip
    for r in rows:
        if r["pruner"] == "none (dense)":
            continue
        assert 0.85 <= r["sparsity_weight"] <= 0.86  # the common target (tile-column grain)
        assert r["crossbar_saving"] > 0.3  # packing frees tiles
        if r["pruner"] == "apa":  # APA's per-layer allocation is what the model has
            alloc = r["allocation"]
            assert set(alloc) == set(n)
            overall = sum(n[k] * alloc[k] for k in n) / sum(n.values())
            assert overall == pytest.approx(r["sparsity_weight"], abs=0.01)
            assert max(alloc.values()) <= 0.97  # s_max
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "accuracy.png").is_file()
    # resumable: a second call reuses every finished arm
    again = prunix_study(data, out=str(tmp_path), quick=True, command="test", t0=0.0)
    assert [r["acc_nonideal_mean"] for r in again["rows"]] == [r["acc_nonideal_mean"] for r in rows]


@pytest.mark.slow
def test_full_comparison(tmp_path):  # ~1 h on 2 CPU cores; writes to tmp_path, not results/
    data = copy.deepcopy(load_yaml(CONFIG))
    data.pop("kind")
    for e in data["experiments"]:
        e["data"]["root"] = str(ROOT / e["data"]["root"])
    summary = prunix_study(data, out=str(tmp_path), quick=False, command="test", t0=0.0)
    assert len(summary["rows"]) == len(data["experiments"]) * 3 * (
        1 + len(data["regularizers"]) * len(data["pruners"])
    )


def test_final_regularizer_must_be_a_bool(tmp_path):
    from xbarprune.errors import ConfigError

    data = copy.deepcopy(load_yaml(CONFIG))
    data.pop("kind")
    data["final_regularizer"] = "yes"
    with pytest.raises(ConfigError, match="final_regularizer"):
        prunix_study(data, out=str(tmp_path), quick=True, command="test", t0=0.0)
