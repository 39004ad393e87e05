"""Read-disturb drift (Jiang et al. 2021) against its formula, its config and the analog layer."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from xbarprune.analog import convert, trial_generator
from xbarprune.config import from_dict
from xbarprune.errors import ConfigError, SpecError
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal import (
    EffectContext,
    NonIdealityConfig,
    NonIdealityModel,
    ReadDisturb,
    preset,
)
from xbarprune.mapping import map_model

KT_Q_300K = 1.380649e-23 * 300.0 / 1.602176634e-19  # 25.85 mV


def test_exponent_and_onset_match_the_formula():
    rd = ReadDisturb(v_read=0.2, cycles=0.0)
    p = 0.0068 * math.exp(0.11 * 0.2 / KT_Q_300K)
    assert rd.exponent == pytest.approx(p, rel=1e-12)
    assert p == pytest.approx(0.015925, abs=1e-6)
    assert rd.onset() == pytest.approx(1.55e-8 * 1.43339 ** (1 / p), rel=1e-9)
    assert rd.onset() == pytest.approx(102.05, rel=1e-3)  # a fresh cell: 100 s of stress
    # cycling brings the onset forward: (1 - 0.003 * 1e4**0.41) ** (1 / p)
    rd_c = replace(rd, cycles=1e4)
    assert rd_c.onset() == pytest.approx(rd.onset() * (1 - 0.003 * 1e4**0.41) ** (1 / p))
    # a higher read voltage accelerates: p grows exponentially with |V|
    assert ReadDisturb(v_read=-0.4).exponent == pytest.approx(
        0.0068 * math.exp(0.11 * 0.4 / KT_Q_300K)
    )


def test_factor_is_one_before_onset_then_power_law():
    rd = ReadDisturb(
        v_read=0.2,
        t_read=1e-8,
        inferences_per_second=1000.0,
        reads_per_inference=8.0,
        cycles=1e4,
    )
    tau, p = rd.onset(), rd.exponent
    per_s = 1000.0 * 8.0 * 1e-8  # stress seconds per second of use
    assert rd.reads(86400.0) == pytest.approx(86400.0 * 8000.0)
    t_on = tau / per_s
    assert rd.factor(0.99 * t_on) == 1.0
    assert rd.factor(86400.0) == pytest.approx((86400.0 * per_s / tau) ** (-p), rel=1e-12)
    assert rd.factor(86400.0) == pytest.approx(0.9071, abs=1e-4)
    assert rd.factor(365.25 * 86400) == pytest.approx(0.8258, abs=1e-4)
    g = torch.full((2, 3, 4), 5e-5)
    ctx = EffectContext(
        device=DeviceSpec(),
        crossbar=CrossbarSpec(4, 4),
        generator=torch.Generator(),
        time_s=86400.0,
    )
    assert torch.allclose(rd.apply(g, ctx), g * rd.factor(86400.0))
    assert ReadDisturb(inferences_per_second=0.0).factor(1e9) == 1.0


def test_validation_and_config():
    with pytest.raises(SpecError, match="ReadDisturb.cycles"):
        ReadDisturb(cycles=2e6)  # k * N**m >= 1: outside the model
    with pytest.raises(SpecError, match="ReadDisturb.t_read"):
        ReadDisturb(t_read=0.0)
    with pytest.raises(ConfigError, match="inferences_per_second"):
        from_dict(NonIdealityConfig, {"read_disturb": {"inferences_per_second": -1}}, "nonideal")
    cfg = from_dict(
        NonIdealityConfig, {"read_disturb": {"inferences_per_second": 10, "cycles": 100}}
    )
    m = NonIdealityModel.from_config(cfg)
    (eff,) = m.stage("time")
    assert isinstance(eff, ReadDisturb) and eff.cycles == 100.0
    assert NonIdealityConfig(read_disturb=ReadDisturb(reads_per_inference=0)).read_disturb
    assert NonIdealityModel.from_config(
        NonIdealityConfig(read_disturb=ReadDisturb(reads_per_inference=0))
    ).is_ideal
    p = preset("reram_read_disturb")
    assert p.read_disturb.cycles == 1e4 and p.adc_bits == 8 and not p.drift_compensation


def test_analog_layer_scales_weights_by_the_factor():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(6, 4, bias=False)).eval()
    lay = map_model(lin, CrossbarSpec(8, 8, cells_per_weight=1, encoding="differential"))
    dev = DeviceSpec(g_min=1e-6, g_max=1e-4)
    rdc = ReadDisturb(inferences_per_second=1000.0, reads_per_inference=8.0, cycles=1e4)
    cfg = NonIdealityConfig(read_disturb=rdc)
    am = convert(lin, lay, dev, NonIdealityModel.from_config(cfg))
    x = torch.randn(3, 6)
    t = 365.25 * 86400
    am.program(trial_generator(0, 0), t)
    a = rdc.factor(t)
    with torch.no_grad():
        assert torch.allclose(am(x), a * lin(x), atol=1e-6)  # G -> a G in both cells
        am2 = convert(
            lin, lay, dev, NonIdealityModel.from_config(replace(cfg, drift_compensation=True))
        )
        am2.program(trial_generator(0, 0), t)
        assert torch.allclose(am2(x), lin(x), atol=1e-6)  # a global factor: compensated
