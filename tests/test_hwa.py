"""Hardware-aware (noise-injection) training: noise law, masks, periphery, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from xbarprune.config import from_dict
from xbarprune.errors import ConfigError, SpecError
from xbarprune.hardware.nonideal.io import IOConfig
from xbarprune.hardware.nonideal.pcm import pcm_prog_sigma
from xbarprune.models import build_model
from xbarprune.training.hwa import HWAConfig, check_unmapped, install_hwa, weight_noise_std
from xbarprune.training.loop import TrainConfig, train
from xbarprune.training.masks import MaskSet


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def _pruned_lenet(frac=0.7):
    model = build_model("lenet5", in_channels=1, image_size=28, seed=0)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    mods = dict(model.named_modules())
    masks = MaskSet()
    for n in names:
        w = mods[n].weight.detach()
        k = int(frac * w.numel())
        thr = w.abs().flatten().kthvalue(k).values
        masks[n] = w.abs() > thr
    masks.apply(model)
    return model, masks


def test_weight_noise_std_law():
    w = torch.tensor([[0.5, 0.0], [-1.0, 0.25]])
    s = weight_noise_std(w, HWAConfig(weight_noise=0.1))
    assert s.flatten().tolist() == pytest.approx([0.1, 0.0, 0.1, 0.1])  # 0.1 w_max; 0 if pruned
    s = weight_noise_std(w, HWAConfig(preset="pcm"))
    x = torch.tensor([0.5, 1.0, 0.25])
    c0 = 0.26348 / 25
    exp = (pcm_prog_sigma(x) ** 2 + c0**2).sqrt()  # w_max = 1
    assert [s[0, 0], s[1, 0], s[1, 1]] == pytest.approx(exp.tolist())
    assert s[0, 1] == 0.0
    # reram: 5 % relative variation -> 0.05 |w|
    s = weight_noise_std(w, HWAConfig(preset="reram"))
    assert s.flatten().tolist() == pytest.approx([0.025, 0.0, 0.05, 0.0125])


def test_hwa_on_pruned_model_keeps_pruned_weights_exactly_zero():
    model, masks = _pruned_lenet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(
        epochs=1,
        batch_size=32,
        lr=1e-2,
        progress=False,
        hwa=HWAConfig(weight_noise=0.05, preset="aihwkit-default"),  # PCM noise + periphery
    )
    train(model, _data(), cfg, masks=masks, seed=0)
    mods = dict(model.named_modules())
    for n, mk in masks.items():
        w = mods[n].weight.detach()
        assert torch.all(w[~mk] == 0), n  # exactly zero
        assert not torch.equal(w[mk], before[f"{n}.weight"][mk]), n  # the kept ones trained
        assert "forward" not in mods[n].__dict__  # plain forward restored


def test_training_forward_is_noisy_eval_forward_is_plain_and_seeded():
    model = build_model("lenet5", in_channels=1, image_size=28, seed=0)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        y0 = model.eval()(x)
        restore = install_hwa(model, HWAConfig(weight_noise=0.1, io=IOConfig()), seed=3)
        assert torch.equal(model.eval()(x), y0)
        model.train()
        a, b = model(x), model(x)
        restore()
        restore2 = install_hwa(model, HWAConfig(weight_noise=0.1, io=IOConfig()), seed=3)
        a2 = model.train()(x)
        restore2()
    assert not torch.equal(a, y0) and not torch.equal(a, b)  # fresh noise per forward
    assert torch.equal(a, a2)  # same seed, same draws
    assert torch.equal(model.eval()(x), y0)


def test_gradients_pass_straight_through_the_periphery():
    lin = nn.Linear(8, 3)
    restore = install_hwa(lin, HWAConfig(io=IOConfig(out_noise=0.0, inp_res=0.25)), seed=0)
    lin.train()
    lin(torch.randn(5, 8)).sum().backward()
    restore()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_hwa_errors():
    for name in ("ideal", "ir_drop", "prunix"):
        with pytest.raises(SpecError, match="no programming model"):
            HWAConfig(preset=name)
    with pytest.raises(SpecError, match="unknown non-ideality preset"):
        HWAConfig(preset="nope")
    with pytest.raises(SpecError, match="nothing to inject"):
        HWAConfig()
    with pytest.raises(ConfigError, match="no programming model"):
        from_dict(TrainConfig, {"epochs": 1, "hwa": {"preset": "ideal"}}, "finetune")
    cfg = from_dict(TrainConfig, {"epochs": 1, "hwa": {"preset": "pcm"}}, "finetune")
    assert cfg.hwa == HWAConfig(preset="pcm")
    model = build_model("lenet5", in_channels=1, image_size=28, seed=0)
    with pytest.raises(ConfigError, match="classifier.relu1"):
        install_hwa(model, HWAConfig(weight_noise=0.1, layers=("classifier.relu1",)))
    with pytest.raises(ConfigError, match="not mapped"):
        check_unmapped(HWAConfig(weight_noise=0.1, layers=("features.conv1",)), {"classifier.fc1"})


def test_pipeline_finetune_hwa(tmp_path):
    """``finetune.hwa`` runs in ``xbarprune run``: pruned weights stay zero; a layer that
    is not mapped is an error."""
    from xbarprune.experiment.config import load_config
    from xbarprune.experiment.pipeline import Run
    from xbarprune.io import load_checkpoint

    cfg = {
        "name": "tiny-hwa",
        "seed": 3,
        "model": {"name": "lenet5"},
        "data": {"name": "mnist-embedded", "train_subset": 300, "test_subset": 100},
        "train": {"epochs": 1, "batch_size": 50, "progress": False},
        "method": {"name": "magnitude", "params": {"sparsity": 0.7}},
        "finetune": {
            "epochs": 1,
            "batch_size": 50,
            "progress": False,
            "hwa": {"preset": "reram", "weight_noise": 0.02},
        },
        "crossbar": {"rows": 32, "cols": 32},
        "nonideal": "reram",
        "evaluate": {"times": ["1s"], "trials": 1, "seed": 1},
        "runtime": {"device": "cpu"},
    }
    run = Run(load_config(cfg), tmp_path / "ok")
    for stage in ("train", "compress", "finetune"):
        getattr(run, f"stage_{stage}")()
    ck = load_checkpoint(run._path("finetune"))
    for name, mk in ck["masks"].items():
        w = ck["model"][f"{name}.weight"]
        assert torch.all(w[~mk.bool()] == 0) and ck["history"], name
    cfg["finetune"]["hwa"]["layers"] = ["classifier.fc9"]
    bad = Run(load_config(cfg), tmp_path / "bad")
    bad.stage_train()
    bad.stage_compress()  # compression's own retraining runs without HWA
    with pytest.raises(ConfigError, match="classifier.fc9.*not mapped"):
        bad.stage_finetune()


def test_select_weight_noise_config_errors():
    with pytest.raises(SpecError, match="needs hwa.preset"):
        HWAConfig(select_weight_noise=(0.01, 0.02), io=IOConfig())
    with pytest.raises(SpecError, match="give one"):
        HWAConfig(preset="pcm", weight_noise=0.03, select_weight_noise=(0.01, 0.02))
    with pytest.raises(SpecError, match=">= 2 candidates"):
        HWAConfig(preset="pcm", select_weight_noise=(0.01,))
    with pytest.raises(SpecError, match=r"select_weight_noise\[1\]"):
        HWAConfig(preset="pcm", select_weight_noise=(0.01, -0.02))
    with pytest.raises(SpecError, match="select_trials"):
        HWAConfig(preset="pcm", select_weight_noise=(0.01, 0.02), select_trials=0)
    with pytest.raises(SpecError):
        HWAConfig(preset="pcm", select_weight_noise=(0.01, 0.02), select_time="yesterday")


def test_noise_chosen_on_validation_equals_a_run_with_that_noise(tmp_path):
    """``finetune.hwa.select_weight_noise``: the chosen candidate is the argmax of the
    recorded validation accuracies, and the selected model is bitwise the model a plain run
    with ``weight_noise`` = the chosen value fine-tunes (same start, seed and draws); the
    test split is not read (its labels replaced by random ones change nothing)."""
    from xbarprune.experiment.config import load_config
    from xbarprune.experiment.pipeline import Run
    from xbarprune.io import load_checkpoint

    cfg = {
        "name": "tiny-hwa-select",
        "seed": 2,
        "model": {"name": "lenet5"},
        "data": {
            "name": "mnist-embedded",
            "train_subset": 300,
            "test_subset": 100,
            "val_size": 0.2,
            "batch_size_eval": 100,
        },  # fmt: skip
        "train": {"epochs": 1, "batch_size": 50, "progress": False},
        "method": {"name": "magnitude", "params": {"sparsity": 0.6}},
        "finetune": {
            "epochs": 1,
            "batch_size": 50,
            "progress": False,
            "hwa": {"preset": "pcm", "select_weight_noise": [0.0, 0.3], "select_trials": 2},
        },
        "crossbar": {"rows": 32, "cols": 32},
        "nonideal": "pcm",
        "evaluate": {"times": ["1y"], "trials": 1, "seed": 1},
        "runtime": {"device": "cpu", "threads": 1},
    }
    run = Run(load_config(cfg), tmp_path / "sel")
    for stage in ("train", "compress", "finetune"):
        getattr(run, f"stage_{stage}")()
    sel = json.loads((run.stages / "hwa_selection.json").read_text())
    assert sel["split"] == "val" and sel["candidates"] == [0.0, 0.3]
    assert len(sel["val_acc"]) == 2 and all(0 <= a <= 1 for a in sel["val_acc"])
    assert sel["chosen"] == sel["candidates"][sel["val_acc"].index(max(sel["val_acc"]))]
    chosen = load_checkpoint(run._path("finetune"))["model"]

    one = json.loads(json.dumps(cfg))
    one["finetune"]["hwa"] = {"preset": "pcm", "weight_noise": sel["chosen"]}
    plain = Run(load_config(one), tmp_path / "one")
    for stage in ("train", "compress", "finetune"):
        getattr(plain, f"stage_{stage}")()
    ref = load_checkpoint(plain._path("finetune"))["model"]
    assert chosen.keys() == ref.keys()
    assert all(torch.equal(chosen[k], ref[k]) for k in ref)

    # the selection never reads the test split: random test labels, the same choice
    other = Run(load_config(cfg), tmp_path / "rnd")
    test = other.splits.test
    g = torch.Generator().manual_seed(9)
    rnd = TensorDataset(
        torch.stack([test[i][0] for i in range(len(test))]),
        torch.randint(0, 10, (len(test),), generator=g),
    )
    other._splits = dataclasses.replace(other.splits, test=rnd)
    for stage in ("train", "compress", "finetune"):
        getattr(other, f"stage_{stage}")()
    sel2 = json.loads((other.stages / "hwa_selection.json").read_text())
    assert sel2 == sel
