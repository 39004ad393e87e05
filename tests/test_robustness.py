"""Issue #16: results independent of the requested set of times, digital-layer coverage,
string paddings on the per-tile path, nn.MultiheadAttention, non-finite training loss."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xbarprune.analog.layers import AnalogLayer
from xbarprune.analog.simulate import convert, evaluate, trial_generator
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel, preset
from xbarprune.mapping import map_model
from xbarprune.mapping.coverage import coverage
from xbarprune.models import build_model

XBAR = CrossbarSpec(32, 32)
DEV = DeviceSpec()


def _data(n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _model():
    return build_model("lenet5", seed=0).eval()


@pytest.fixture(scope="module")
def trained():
    """LeNet-5 trained for one epoch on 1000 embedded MNIST images (a few seconds), and 200
    test images: accuracies that vary between Monte Carlo trials."""
    from xbarprune.data import load_splits
    from xbarprune.training.loop import TrainConfig, train

    s = load_splits("mnist-embedded", train_subset=1000, test_subset=200, seed=0)
    model = _model()
    train(model, s.train, TrainConfig(epochs=1, batch_size=50, lr=3e-3, progress=False),
          device="cpu", seed=0)  # fmt: skip
    return model.eval(), DataLoader(s.test, batch_size=100)


def _pcm_adc() -> NonIdealityConfig:
    return replace(preset("pcm"), dac_bits=6, adc_bits=6)


@pytest.mark.parametrize("name", ["pcm+adc", "reram", "sparse_nonideal"])
def test_results_do_not_depend_on_the_other_requested_times(name, trained):
    """Per-trial accuracies at 1 y are bitwise identical for times (1y), (1s, 1y), (1y, 1s):
    the converters are calibrated once on the ideal chip, not on whichever (trial, time) runs
    first."""
    cfg = _pcm_adc() if name == "pcm+adc" else preset(name)
    assert cfg.adc_bits is not None  # the case that used to depend on the order
    ni = NonIdealityModel.from_config(cfg)
    model, data = trained
    layout = map_model(model, XBAR)
    year, sec = 31557600.0, 1.0
    runs = {}
    for times in ((year,), (sec, year), (year, sec)):
        res = evaluate(model, data, layout, DEV, ni, trials=3, seed=5, times=times)
        runs[times] = {r.time_s: r.per_trial for r in res}
    assert runs[(year,)][year] == runs[(sec, year)][year] == runs[(year, sec)][year]
    assert runs[(sec, year)][sec] == runs[(year, sec)][sec]
    assert len(set(runs[(year,)][year])) > 1  # trials differ: the test is not vacuous


def test_calibration_is_a_function_of_the_ideal_chip_only():
    """The full scales after calibration equal those of an ideal chip's first batch, whatever
    trial was programmed before."""
    model, data = _model(), _data()
    layout = map_model(model, XBAR)
    ni = NonIdealityModel.from_config(_pcm_adc())
    x = next(iter(data))[0]
    a = convert(model, layout, DEV, ni)
    a.program(trial_generator(0, 7), time_s=1e6)  # a noisy, drifted chip first
    a.calibrate(x)
    ideal = convert(model, layout, DEV, NonIdealityModel.from_config(
        NonIdealityConfig(dac_bits=6, adc_bits=6)))  # fmt: skip
    ideal.program(trial_generator(0, 0))
    ideal(x)
    for la, li in zip(a.analog_layers(), ideal.analog_layers(), strict=True):
        assert la.x_fs == li.x_fs and la.adc_fs == li.adc_fs


class _WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.lstm = nn.LSTM(26 * 4, 8, batch_first=True)
        self.bil = nn.Bilinear(8, 8, 5)
        self.scale = nn.Parameter(torch.ones(5, 10))
        self.fc = nn.Linear(5, 10)

    def forward(self, x):
        h = self.conv(x)  # (B, 4, 26, 26)
        h = h.permute(0, 2, 1, 3).flatten(2)  # (B, 26, 104)
        h, _ = self.lstm(h)
        h = h[:, -1]
        return self.fc(self.bil(h, h)) + (h[:, :5] @ self.scale)


def test_digital_layers_are_listed_with_their_weights():
    m = _WithLSTM()
    layout = map_model(m, XBAR)
    assert list(layout.layers) == ["conv", "fc"]
    cov = coverage(m, layout)
    by = {d["name"]: d for d in cov.digital}
    lstm = 4 * 8 * (26 * 4) + 4 * 8 * 8  # weight_ih + weight_hh
    assert by["lstm"]["weights"] == lstm and by["lstm"]["type"] == "LSTM"
    assert by["bil"]["weights"] == 5 * 8 * 8
    assert by[""]["weights"] == 50 and by[""]["params"] == ["scale"]  # a bare parameter
    mapped = 4 * 9 + 10 * 5
    assert cov.mapped_weights == mapped
    assert cov.total_weights == mapped + lstm + 320 + 50
    assert cov.fraction_on_crossbars == pytest.approx(mapped / cov.total_weights)
    # explicitly left digital
    layout2 = map_model(m, XBAR, digital=("fc",))
    cov2 = coverage(m, layout2, ("fc",))
    assert {d["name"]: d["reason"] for d in cov2.digital}["fc"] == "left digital by model.digital"


@pytest.mark.parametrize("padding", ["same", "valid", 1])
def test_string_padding_on_the_per_tile_path(padding):
    """padding='same' / 'valid' through both per-tile conv paths (grouped conv and im2col)
    equals the digital convolution when the converters are fine enough."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, (3, 4), padding=padding, dilation=(1, 2), bias=True).eval()
    x = torch.randn(2, 3, 9, 10)
    ref = conv(x)
    layout = map_model(conv, CrossbarSpec(16, 16))
    ni = NonIdealityModel.from_config(NonIdealityConfig(adc_bits=24))
    for im2col in (False, True):
        al = AnalogLayer(conv, layout[""], DEV, ni)
        if im2col:
            al._conv_bands = None
        al.program(trial_generator(0, 0))
        y = al(x)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref, atol=2e-4, rtol=1e-4)


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(28, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.embed(x.squeeze(1))
        h, _ = self.attn(h, h, h)
        return self.head(h.mean(1))


def test_multihead_attention_runs_with_its_projections_digital():
    m = _Attn().eval()
    layout = map_model(m, XBAR)
    assert list(layout.layers) == ["embed", "head"]  # attn.out_proj is not swapped
    cov = coverage(m, layout)
    by = {d["name"]: d for d in cov.digital}
    assert by["attn"]["weights"] == 3 * 16 * 16 and by["attn.out_proj"]["weights"] == 16 * 16
    assert "MultiheadAttention" in by["attn.out_proj"]["reason"]
    x = torch.rand(4, 1, 28, 28)
    am = convert(m, layout, DEV, NonIdealityModel.from_config(NonIdealityConfig()))
    am.program(trial_generator(0, 0))
    torch.testing.assert_close(am(x), m(x), atol=1e-5, rtol=1e-5)


def test_non_finite_loss_stops_with_the_epoch(tmp_path, capsys):
    import yaml

    from xbarprune.cli import main

    cfg = {
        "model": {"name": "lenet5"},
        "data": {"name": "mnist-embedded", "train_subset": 200, "test_subset": 100},
        "train": {
            "epochs": 1,
            "batch_size": 50,
            "lr": 1e30,
            "optimizer": "sgd",
            "progress": False,
        },  # fmt: skip
        "runtime": {"device": "cpu"},
    }
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epoch 1" in err[0] and "train.lr" in err[0], err


def test_strict_refuses_digital_layers(tmp_path, capsys, monkeypatch):
    import yaml

    from xbarprune.cli import main

    (tmp_path / "attnmodels.py").write_text(
        "import torch\nfrom torch import nn\n\nclass Attn(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n        super().__init__()\n"
        "        self.embed = nn.Linear(28, 16)\n"
        "        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)\n"
        "        self.head = nn.Linear(16, num_classes)\n\n"
        "    def forward(self, x):\n        h = self.embed(x.squeeze(1))\n"
        "        h, _ = self.attn(h, h, h)\n        return self.head(h.mean(1))\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = {"model": {"name": "import:attnmodels:Attn"},
           "data": {"name": "mnist-embedded", "train_subset": 100, "test_subset": 50},
           "train": {"epochs": 0}, "finetune": {"epochs": 0},
           "runtime": {"device": "cpu"}}  # fmt: skip
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "runtime.strict" in err and "attn" in err and not (tmp_path / "o").exists()
    # without --strict the run goes through and its report lists the digital layers
    cfg["evaluate"] = {"times": ["1s"], "trials": 1}
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| attn | MultiheadAttention | 768 |" in md
