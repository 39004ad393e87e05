"""Shared fixtures."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset


@pytest.fixture
def random_test_labels(monkeypatch):
    """From now on every ``load_splits`` (the pipeline's, hence every bench arm run in this
    process) gets uniformly random test labels: a selection that reads only the validation
    split must not notice."""
    import xbarprune.data as data_mod

    real_load = data_mod.load_splits

    def fake(*a, **kw):
        s = real_load(*a, **kw)
        x = torch.stack([s.test[i][0] for i in range(len(s.test))])
        y = torch.randint(0, 10, (len(s.test),), generator=torch.Generator().manual_seed(1))
        return dataclasses.replace(s, test=data_mod.mark_split(TensorDataset(x, y), "test"))

    monkeypatch.setattr(data_mod, "load_splits", fake)
