"""Non-ideality configs (validation, YAML loading), presets and the composed model."""

from __future__ import annotations

import json
import typing

import pytest
import torch
import yaml

from xbarprune.config import from_dict, to_dict
from xbarprune.errors import ConfigError, SpecError
from xbarprune.hardware.nonideal import (
    PRESETS,
    Aging,
    Drift,
    EffectContext,
    IRDrop,
    NonIdealityConfig,
    NonIdealityModel,
    PCMStatistical,
    ProgrammingVariation,
    Quantization,
    ReadDisturb,
    ReadNoise,
    StuckAtFaults,
    preset,
)
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec

DEV = DeviceSpec(g_min=1e-6, g_max=1e-4, levels=16)


def ctx(seed=0, time_s=1.0, used=None):
    return EffectContext(
        DEV, CrossbarSpec(8, 8), torch.Generator().manual_seed(seed), time_s=time_s, used=used
    )


FULL = NonIdealityConfig(
    quantization=Quantization(levels=8),
    aging=Aging(cycles=1e6),
    variation=ProgrammingVariation(sigma=0.05),
    faults=StuckAtFaults(sa0=0.01, sa1=0.01),
    pcm=PCMStatistical(),
    drift=Drift(nu_mean=0.1, nu_std=0.02),
    ir_drop=IRDrop(r_row=1.0, r_col=1.0),
    read_noise=ReadNoise(sigma=0.02),
    dac_bits=8,
    adc_bits=6,
    adc_full_scale=2.0,
    drift_compensation=True,
)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (Quantization, {"levels": 1}, "Quantization.levels"),
        (ProgrammingVariation, {"sigma": -0.1}, "ProgrammingVariation.sigma"),
        (ProgrammingVariation, {"sigma": 0.1, "mode": "gauss"}, "ProgrammingVariation.mode"),
        (ReadNoise, {"sigma": -1.0}, "ReadNoise.sigma"),
        (Drift, {"t0": 0.0}, "Drift.t0"),
        (Drift, {"nu_std": -0.01}, "Drift.nu_std"),
        (Drift, {"nu_mean": float("nan")}, "Drift.nu_mean"),
        (Aging, {"cycles": -5.0}, "Aging.cycles"),
        (Aging, {"cycles": 1.0, "beta": 1.5}, "Aging.beta"),
        (StuckAtFaults, {"sa0": 1.2}, "StuckAtFaults.sa0"),
        (StuckAtFaults, {"sa1": -0.1}, "StuckAtFaults.sa1"),
        (StuckAtFaults, {"sa0": 0.6, "sa1": 0.6}, "StuckAtFaults.sa0 + StuckAtFaults.sa1"),
        (StuckAtFaults, {"pattern": "diag"}, "StuckAtFaults.pattern"),
        (IRDrop, {"r_row": -1.0}, "IRDrop.r_row"),
        (IRDrop, {"r_sink": -1.0}, "IRDrop.r_sink"),
        (IRDrop, {"max_iter": 0}, "IRDrop.max_iter"),
        (PCMStatistical, {"t_read": 0.0}, "PCMStatistical.t_read"),
        (PCMStatistical, {"drift_scale": -1.0}, "PCMStatistical.drift_scale"),
        (NonIdealityConfig, {"dac_bits": 0}, "NonIdealityConfig.dac_bits"),
        (NonIdealityConfig, {"adc_bits": 40}, "NonIdealityConfig.adc_bits"),
        (NonIdealityConfig, {"adc_full_scale": 0.0}, "NonIdealityConfig.adc_full_scale"),
    ],
)
def test_configs_reject_bad_values_naming_the_field(cls, kwargs, field):
    with pytest.raises(SpecError) as exc:
        cls(**kwargs)
    assert field in str(exc.value)


def test_from_dict_yaml_round_trip_and_errors():
    text = """
    quantization: {levels: 8}
    variation: {sigma: 0.05, mode: lognormal}
    faults: {sa0: 0.05, sa1: 0.01, pattern: row}
    drift: {nu_mean: 0.1, nu_std: 0.02, t0: 1}
    pcm: {prog_coeff: [0.2, 1.0, -0.5]}
    ir_drop: {r_row: 5, r_col: 10, r_source: 1000, r_sink: 1000, method: approx}
    adc_bits: 8
    """
    cfg = from_dict(NonIdealityConfig, yaml.safe_load(text))
    assert cfg.variation == ProgrammingVariation(0.05, "lognormal")
    assert cfg.faults.pattern == "row" and cfg.drift.t0 == 1.0
    assert cfg.pcm.prog_coeff == (0.2, 1.0, -0.5) and cfg.ir_drop.method == "approx"
    assert cfg.aging is None and cfg.adc_bits == 8 and cfg.adc_full_scale is None
    for name, p in PRESETS.items():
        assert from_dict(NonIdealityConfig, yaml.safe_load(yaml.safe_dump(to_dict(p)))) == p, name
    with pytest.raises(ConfigError, match=r"^faults\.sa0 = 2\.0 is out of range"):
        from_dict(NonIdealityConfig, {"faults": {"sa0": 2}})
    with pytest.raises(ConfigError, match="mode"):
        from_dict(NonIdealityConfig, {"read_noise": {"sigma": 0.1, "mode": "pink"}})
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(NonIdealityConfig, {"drift": {"nu": 0.1}})


def test_model_order_stages_and_flags():
    m = NonIdealityModel.from_config(FULL)
    kinds = [type(e) for e in m.effects]
    assert kinds == [
        Quantization,
        Aging,
        ProgrammingVariation,
        StuckAtFaults,
        PCMStatistical,
        Drift,
        IRDrop,
        ReadNoise,
    ]
    assert [type(e) for e in m.stage("program")] == kinds[:4]
    assert [type(e) for e in m.stage("time")] == [PCMStatistical, Drift]
    assert [type(e) for e in m.stage("read")] == [ReadNoise]
    assert m.has_read_stage and not m.is_ideal
    assert (m.dac_bits, m.adc_bits, m.adc_full_scale) == (8, 6, 2.0)
    assert m.config is FULL and m.drift_compensation
    json.dumps(m.describe())
    with pytest.raises(SpecError, match="stage"):
        m.stage("write")


def test_noop_sections_are_dropped():
    cfg = NonIdealityConfig(
        variation=ProgrammingVariation(sigma=0.0),
        faults=StuckAtFaults(),
        ir_drop=IRDrop(),
        drift=Drift(nu_mean=0.0),
        aging=Aging(cycles=0.0),
        read_noise=ReadNoise(sigma=0.0),
    )
    m = NonIdealityModel.from_config(cfg)
    assert m.is_ideal and not m.has_read_stage and m.effects == ()
    # the effect itself says whether it does nothing (was each *Config.build() -> None)
    assert all(getattr(cfg, k).is_ideal for k in ("variation", "faults", "ir_drop", "drift"))
    assert ReadDisturb(inferences_per_second=0.0).is_ideal and Aging(1e6, 0.0, 0.0).is_ideal
    for busy in (
        ProgrammingVariation(sigma=0.01),
        StuckAtFaults(sa1=0.01),
        IRDrop(r_sink=1.0),
        Drift(nu_mean=0.0, nu_std=0.01),
        Aging(cycles=1.0),
        ReadDisturb(),
        ReadNoise(sigma=0.01),
        Quantization(levels=2),
        PCMStatistical(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0),
    ):
        assert not busy.is_ideal, busy
        assert NonIdealityModel.from_config(NonIdealityConfig(**_section(busy))).effects == (busy,)
    assert not NonIdealityModel.from_config(NonIdealityConfig(dac_bits=8)).is_ideal
    assert NonIdealityModel.from_config(None).is_ideal
    assert NonIdealityModel().config.adc_bits is None


def test_program_runs_quantization_before_aging():
    cfg = NonIdealityConfig(quantization=Quantization(levels=2), aging=Aging(cycles=1e6, alpha=0.2))
    m = NonIdealityModel.from_config(cfg)
    g = torch.tensor([[[9.9e-5, 2e-6]]], dtype=torch.float64)
    out = m.program(g, ctx())
    # quantise to {g_min, g_max}, then clip into the aged window [1.2e-6, 8e-5]
    assert torch.allclose(out, torch.tensor([[[8e-5, 1.2e-6]]], dtype=torch.float64))


def test_program_time_circuit_read_and_determinism():
    m = NonIdealityModel.from_config(FULL)
    g = 1e-6 + 9.9e-5 * torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    a = m.program(g, ctx(5, time_s=100.0))
    b = m.program(g, ctx(5, time_s=100.0))
    assert torch.equal(a, b) and not torch.equal(a, m.program(g, ctx(6, time_s=100.0)))
    c = ctx(7)
    r1, r2 = m.read(m.circuit(a, c), c), m.read(m.circuit(a, c), c)
    assert not torch.equal(r1, r2)  # read noise is fresh per inference
    out = m.apply(g, ctx(8, time_s=10.0))
    assert out.shape == g.shape and torch.isfinite(out).all() and (out >= 0).all()
    with pytest.raises(SpecError, match="time_s"):
        m.program(g, ctx(time_s=-1.0))


def test_presets():
    assert set(PRESETS) >= {"ideal", "prunix", "reram", "pcm", "ir_drop"}
    assert NonIdealityModel.from_config("ideal").is_ideal
    p = preset("prunix")
    assert p.quantization.levels == 8
    assert (p.drift.nu_mean, p.drift.nu_std, p.drift.t0) == (0.1, 0.02, 1.0)
    assert (p.faults.sa0, p.faults.sa1) == (0.05, 0.01)  # SA0 = HRS 5 %, SA1 = LRS 1 %
    lo, hi = NonIdealityModel.from_config(p).stage("program")[1].window(DEV)
    assert lo == pytest.approx(1.2e-6) and hi == pytest.approx(8e-5)  # alpha = beta = 0.2
    r = preset("reram")
    assert r.quantization.levels == 16 and r.adc_bits == 8
    assert r.variation.sigma == 0.05 and r.read_noise.sigma == 0.02
    assert preset("pcm").pcm == PCMStatistical()
    ir = preset("ir_drop").ir_drop
    assert (ir.r_source, ir.r_sink, ir.r_row, ir.r_col) == (1000.0, 1000.0, 5.0, 10.0)
    assert preset("ir_drop").quantization.levels == 16
    with pytest.raises(SpecError, match="ideal") as exc:
        preset("memristor")
    assert "prunix" in str(exc.value) and "'memristor'" in str(exc.value)
    for name in PRESETS:
        m = NonIdealityModel.from_config(name)
        json.dumps(m.describe())


def test_manual_model_validation():
    with pytest.raises(SpecError, match="ConductanceEffect"):
        NonIdealityModel(effects=("not an effect",))


def _section(effect) -> dict:
    """``{section: effect}`` for the NonIdealityConfig field whose type is the effect's."""
    from xbarprune.hardware.nonideal.model import EFFECT_SECTIONS

    hints = typing.get_type_hints(NonIdealityConfig)
    (name,) = [k for k in EFFECT_SECTIONS if type(effect) in typing.get_args(hints[k])]
    return {name: effect}
