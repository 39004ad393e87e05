"""The study kit's arm cache: resumable, and never reusing a record of another config."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from xbarprune.compress.methods.admm import ADMMParams
from xbarprune.experiment.config import DataConfig, ModelConfig
from xbarprune.experiment.studykit import Bench, config_fingerprint


def _bench(tmp_path):
    splits = SimpleNamespace(name="toy")
    return Bench(ModelConfig(), DataConfig(), 0, tmp_path, torch.device("cpu"), splits, log=print)


def test_arm_cache_reuses_same_config_and_rebuilds_a_changed_one(tmp_path):
    bench = _bench(tmp_path)
    calls = []

    def build(v):
        def b():
            calls.append(v)
            return {"base": {"value": v}}

        return b

    a = ADMMParams(iterations=2)
    assert bench.arm("x", build(1), config=a)["base"]["value"] == 1
    assert bench.arm("x", build(2), config=ADMMParams(iterations=2))["base"]["value"] == 1
    assert calls == [1]  # same config: read back, not rebuilt
    rec = bench.arm("x", build(3), config=ADMMParams(iterations=3))
    assert rec["base"]["value"] == 3 and calls == [1, 3]  # changed config: rebuilt
    assert rec["base"]["arm_config"] == config_fingerprint(ADMMParams(iterations=3))
    # a record without a fingerprint is reused ...
    (tmp_path / "arm_y.json").write_text(
        json.dumps({"base": {"value": 7, "selection_split": "val"}})
    )
    assert bench.arm("y", build(8), config=a)["base"]["value"] == 7
    # ... but one stored before held-out selection (issue #21) is rebuilt
    (tmp_path / "arm_z.json").write_text(json.dumps({"base": {"value": 7}}))
    rec = bench.arm("z", build(9), config=a)
    assert rec["base"]["value"] == 9 and rec["base"]["selection_split"] == "val"


def test_fingerprint_is_stable_and_sensitive():
    assert config_fingerprint([ADMMParams(), 64]) == config_fingerprint([ADMMParams(), 64])
    assert config_fingerprint([ADMMParams(), 64]) != config_fingerprint([ADMMParams(), 32])
    assert config_fingerprint({"a": 1, "b": 2}) == config_fingerprint({"b": 2, "a": 1})
