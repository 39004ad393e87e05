"""Held-out selection, enforced by construction (issue #21, item 2).

The law: replacing the test set's labels with random ones leaves every selection unchanged,
while the test accuracies themselves do change (so the check is not vacuous). The studies run
on the engine, so the law is tested with each: tests/test_bench.py, test_admm_compare.py,
test_liang_compare.py, test_prunix_compare.py (APA's allocation and the "best other arm").
Plus the API guards: splits carry their role, a compress context refuses the test split, a
study always carves a validation split.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from xbarprune.compress.base import CompressContext
from xbarprune.data import DEFAULT_VAL_FRACTION, load_splits, split_role
from xbarprune.errors import ConfigError
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.mapping.layout import map_model
from xbarprune.models import build_model
from xbarprune.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ API guards


def test_splits_carry_their_role_through_wrappers():
    s = load_splits("mnist-embedded", val_size=50, train_subset=100, test_subset=50, seed=0)
    assert (split_role(s.train), split_role(s.val), split_role(s.test)) == ("train", "val", "test")
    assert split_role(DataLoader(Subset(s.test, [0, 1]), batch_size=2)) == "test"
    assert split_role(TensorDataset(torch.zeros(2, 1))) is None


def test_compress_context_refuses_the_test_split():
    s = load_splits("mnist-embedded", val_size=50, train_subset=100, test_subset=50, seed=0)
    model = build_model("lenet5", seed=0)
    kw = dict(model=model, layout=map_model(model, CrossbarSpec(32, 32)), device_spec=DeviceSpec(),
              train_data=s.train, finetune_cfg=TrainConfig(epochs=0))  # fmt: skip
    for bad in (s.test, Subset(s.test, [0, 1, 2]), DataLoader(s.test, batch_size=8)):
        with pytest.raises(ConfigError, match="test split"):
            CompressContext(val_data=bad, **kw)
    ctx = CompressContext(val_data=None, **kw)  # a method that selects nothing may run
    with pytest.raises(ConfigError, match="val_size"):
        ctx.val_accuracy()
    assert CompressContext(val_data=s.val, **kw).selection_data() is s.val


def test_a_run_carves_a_validation_split_and_passes_download(monkeypatch, tmp_path):
    """The pipeline every bench arm runs through: its data come from `load_splits` with the
    config's `download` and a validation split carved from the training data."""
    from xbarprune.experiment.config import load_config
    from xbarprune.experiment.pipeline import Run

    seen = {}
    real = load_splits

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr("xbarprune.data.load_splits", spy)
    cfg = load_config({"model": {"name": "lenet5"}, "data": {"name": "mnist-embedded",
                       "val_size": 0.1, "train_subset": 200, "test_subset": 50}})  # fmt: skip
    run = Run(cfg, tmp_path, log=lambda s: None)
    val = run.splits.val
    assert seen["val_size"] == DEFAULT_VAL_FRACTION == 0.1 and seen["download"] is False
    n_all = len(real("mnist-embedded").train)  # the whole embedded training split
    assert len(val) == round(0.1 * n_all)  # 10 % of the training data, not the test set
    assert split_role(val) == "val" and split_role(run.splits.test) == "test"
    m = run.build_model()
    ctx = run._compress_context(m, run.map(m))
    assert ctx.selection_data() is val


def test_targets_choose_on_validation_never_on_test_numbers():
    from xbarprune.experiment.bench import TargetSpec, select_targets

    def rec(method, acc_val, acc_ideal, saving):
        r = {"method": method, "method_name": "x", "budget": None, "seed": 0,
             "acc_ideal": acc_ideal, "crossbar_saving": saving, "nonideal": {}}  # fmt: skip
        return {**r, "acc_val": acc_val} if acc_val is not None else r

    records = [
        rec("none", 0.95, 0.5, 0.0),
        rec("a", 0.9, 0.1, 0.5),
        rec("b", 0.8, 0.99, 0.7),
        rec("c", 0.93, 0.2, 0.9),
        rec("d", None, 0.99, 1.0),
    ]  # stored before held-out: no acc_val, never chosen
    [t] = select_targets(records, [TargetSpec(label="t", max_val_drop=0.06)])
    assert t["per_seed"][0]["method"] == "c"  # best saving within 6 pp on validation
    assert t["per_seed"][0]["feasible_arms"] == 2  # a and c; b is 15 pp below on validation
    assert t["per_seed"][0]["acc_ideal"] == 0.2  # its test figure, reported, not used
