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
        assert len(r["acc_nonideal_trials"]) == 2
    pruned = [r for r in rows if r["pruner"] != "none (dense)"]
    for r in pruned:
        assert r["sparsity_weight"] >= 0.85 - 0.01  # the common target
        assert 0 <= r["crossbar_saving"] <= 1
    assert {r["drift_time_s"] for r in rows} == {1.0, 31557600.0}
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
