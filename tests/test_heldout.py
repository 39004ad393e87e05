"""Held-out selection, enforced by construction (issue #21, item 2).

The law: replacing the test set's labels with random ones leaves every selection unchanged —
PRUNIX's APA allocation (the ADMM and Liang studies run on the engine: their choices,
Liang's per-layer ratio search among them, are tested in tests/test_admm_compare.py and
tests/test_liang_compare.py) — while the test accuracies themselves do change (so the check
is not vacuous).
Plus the API guards: splits carry their role, a compress context refuses the test split, a
study always carves a validation split.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from xbarprune.compress.base import CompressContext
from xbarprune.config import load_yaml
from xbarprune.data import DEFAULT_VAL_FRACTION, load_splits, mark_split, split_role
from xbarprune.errors import ConfigError
from xbarprune.experiment import studykit
from xbarprune.experiment.config import DataConfig, ModelConfig
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.mapping.layout import map_model
from xbarprune.models import build_model
from xbarprune.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _randomise_test_labels(monkeypatch) -> None:
    """Every study bench opened from now on gets uniformly random test labels."""
    real = studykit.study_splits

    def fake(dc, seed):
        s = real(dc, seed)
        x, y = s.test.tensors
        g = torch.Generator().manual_seed(1234)
        rnd = torch.randint(0, s.num_classes, y.shape, generator=g)
        assert (rnd != y).float().mean() > 0.5
        return dataclasses.replace(s, test=mark_split(TensorDataset(x, rnd), "test"))

    monkeypatch.setattr(studykit, "study_splits", fake)


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


def test_study_always_carves_a_validation_split_and_passes_download(monkeypatch, tmp_path):
    seen = {}
    real = load_splits

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr("xbarprune.data.load_splits", spy)
    dc = DataConfig(name="mnist-embedded", val_size=0, train_subset=200, test_subset=50)
    bench = studykit.Bench.open(ModelConfig(), dc, 0, tmp_path, torch.device("cpu"))
    assert seen["val_size"] == DEFAULT_VAL_FRACTION == 0.1 and seen["download"] is False
    n_all = len(real("mnist-embedded").train)  # the whole embedded training split
    assert len(bench.val) == round(0.1 * n_all)  # 10 % of the training data, not the test set
    assert split_role(bench.val) == "val"
    m = bench.fresh()
    ctx = bench.context(m, map_model(m, CrossbarSpec(32, 32)), DeviceSpec(), TrainConfig(epochs=0))
    assert split_role(ctx.val_data) == "val"
    # no validation split at all: Bench.val raises instead of returning the test split
    bench.splits = dataclasses.replace(bench.splits, val=None)
    with pytest.raises(ConfigError, match="validation split"):
        _ = bench.val


def test_select_best_cannot_read_test_numbers():
    rows = [
        {"arm": "a", "acc_val": 0.9, "acc_ideal": 0.1, "saving": 0.5},
        {"arm": "b", "acc_val": 0.8, "acc_ideal": 0.99, "saving": 0.7},
        {"arm": "c", "acc_val": 0.95, "acc_ideal": 0.99, "saving": 0.9},
        {"arm": "d", "acc_ideal": 0.99, "saving": 1.0},  # stored before held-out: no acc_val
    ]
    pick = studykit.select_best(
        rows, feasible=lambda r: r["acc_val"] >= 0.85, objective=lambda r: r["saving"]
    )
    assert pick["arm"] == "c"
    with pytest.raises(KeyError):
        studykit.select_best(rows, feasible=lambda r: r["acc_ideal"] > 0.5, objective=len)


# ------------------------------------------------- random test labels change no selection


def test_random_test_labels_leave_the_prunix_apa_allocation_unchanged(tmp_path, monkeypatch):
    from xbarprune.experiment.prunix_compare import prunix_study, selections

    def cfg() -> dict:
        data = copy.deepcopy(load_yaml(ROOT / "examples" / "prunix_compare.yaml"))
        data.pop("kind")
        data["experiments"] = [
            {"model": {"name": "lenet5"}, "data": {"name": "mnist-embedded", "val_size": 0.1}}
        ]
        data["train"]["epochs"] = 1
        data["regularizers"] = {"none": {}}  # one APA arm is all this test needs
        data["pruners"] = ["apa"]
        data["quick"]["times"] = ["1d"]
        data["runtime"] = {"threads": 1}
        return data

    real = prunix_study(cfg(), out=str(tmp_path / "real"), quick=True, command="t", t0=0.0)
    _randomise_test_labels(monkeypatch)
    rand = prunix_study(cfg(), out=str(tmp_path / "random"), quick=True, command="t", t0=0.0)
    apa_r = [r for r in real["rows"] if r["pruner"] == "apa"]
    apa_x = [r for r in rand["rows"] if r["pruner"] == "apa"]
    assert apa_r and [r["allocation"] for r in apa_r] == [r["allocation"] for r in apa_x]
    alloc = apa_r[0]["allocation"]
    assert len(set(alloc.values())) > 1  # APA did allocate: the layers got different sparsity
    assert [r["acc_ideal"] for r in real["rows"]] != [r["acc_ideal"] for r in rand["rows"]]
    assert selections(real["rows"]) == selections(rand["rows"])
    assert real["selection_split"] == "val"
    # the test split really moved: ideal test accuracy near chance with random labels
    assert max(r["acc_ideal"] for r in rand["rows"]) < 0.3
