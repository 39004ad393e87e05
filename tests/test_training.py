"""Training loop: resume after a kill equals an uninterrupted run; masks; bad settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from xbarprune.errors import SpecError
from xbarprune.training import MaskSet, TrainConfig, train


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 10, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))


CFG = TrainConfig(
    epochs=3, batch_size=16, optimizer="sgd", lr=0.1, schedule="cosine", progress=False
)


def test_resume_equals_uninterrupted(tmp_path):
    ref = _model()
    h_ref = train(ref, _data(), CFG, seed=4)
    # "killed" after epoch 1: run 1 epoch with the 3-epoch schedule by interrupting
    part = _model()
    ck = tmp_path / "ck.pt"

    class Stop(Exception):
        pass

    calls = {"n": 0}

    def kill_in_epoch_two(model):
        calls["n"] += 1
        if calls["n"] > 6 + 2:  # 6 steps per epoch: die during epoch 2
            raise Stop

    with pytest.raises(Stop):
        train(part, _data(), CFG, seed=4, checkpoint=ck, post_step=kill_in_epoch_two)
    resumed = _model()
    h = train(resumed, _data(), CFG, seed=4, checkpoint=ck)
    for a, b in zip(ref.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert [r["loss"] for r in h.epochs] == pytest.approx([r["loss"] for r in h_ref.epochs])
    # the epoch an earlier invocation ran is counted as resumed, with its recorded seconds
    assert h_ref.resumed_s == 0.0
    assert h.resumed_s == h.epochs[0]["seconds"] > 0
    again = train(_model(), _data(), CFG, seed=4, checkpoint=ck)  # every epoch loaded
    assert again.resumed_s == pytest.approx(sum(r["seconds"] for r in h.epochs))


def test_masks_keep_zeros_and_mask_momentum():
    m = _model()
    mask = torch.ones_like(m[0].weight, dtype=torch.bool)
    mask[:4] = False
    masks = MaskSet({"0": mask})
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=0.05, progress=False)
    train(m, _data(), cfg, masks=masks)
    assert float(m[0].weight.detach()[:4].abs().max()) == 0.0
    assert float(m[0].weight.detach()[4:].abs().max()) > 0


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"epochs": -1}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"momentum": 1.5}, "momentum"),
    ],
)
def test_bad_train_config(kw, field):
    with pytest.raises(SpecError, match=field):
        TrainConfig(**kw)
