"""Single non-ideality effects: quantisation, variation, read noise, drift, aging, faults, PCM,
converters. Seeded; the numbers are those a wrong implementation would miss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal import (
    ADC,
    DAC,
    Aging,
    Drift,
    EffectContext,
    PCMStatistical,
    ProgrammingVariation,
    Quantization,
    ReadNoise,
    StuckAtFaults,
    aged_window,
    drift_factor,
    quantize_uniform,
    shrink_fraction,
)
from xbarprune.hardware.nonideal.pcm import pcm_drift_nu_stats, pcm_prog_sigma, pcm_read_sigma
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec

DEV = DeviceSpec(g_min=1e-6, g_max=1e-4, levels=16)


def ctx(seed=0, *, device=DEV, time_s=1.0, used=None, rows=64, cols=64):
    return EffectContext(
        device=device,
        crossbar=CrossbarSpec(rows=rows, cols=cols),
        generator=torch.Generator().manual_seed(seed),
        time_s=time_s,
        used=used,
    )


def binomial_ok(k: int, n: int, p: float, z: float = 4.0) -> bool:
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


# ------------------------------------------------------------------------- quantisation


def test_quantization_hand_case():
    dev = DeviceSpec(g_min=0.0, g_max=3e-6, levels=4)  # levels 0, 1, 2, 3 uS
    g = torch.tensor([-1e-6, 0.4e-6, 0.6e-6, 1.49e-6, 2.51e-6, 5e-6], dtype=torch.float64)
    out = Quantization().apply(g.view(1, 1, -1), ctx(device=dev)).flatten()
    want = torch.tensor([0.0, 0.0, 1e-6, 1e-6, 3e-6, 3e-6], dtype=torch.float64)
    assert torch.allclose(out, want, rtol=0, atol=1e-18)
    # explicit levels override the device: 2 levels -> {0, 3 uS}
    out2 = Quantization(levels=2).apply(torch.tensor([[[1.4e-6, 1.6e-6]]]), ctx(device=dev))
    assert torch.allclose(out2.flatten(), torch.tensor([0.0, 3e-6]), atol=1e-15)


def test_quantization_outputs_are_levels_and_idempotent():
    g = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1)) * 2e-4 - 2e-5
    q = Quantization(levels=8).apply(g, ctx())
    k = (q - DEV.g_min) / (DEV.g_range / 7)
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert q.min() >= DEV.g_min - 1e-12 and q.max() <= DEV.g_max + 1e-12
    assert torch.equal(Quantization(levels=8).apply(q, ctx()), q)
    # nearest level: error at most half a step inside the window
    inside = (g >= DEV.g_min) & (g <= DEV.g_max)
    assert ((q - g)[inside].abs() <= DEV.g_range / 7 / 2 + 1e-12).all()


def test_quantization_rejects_bad_levels():
    with pytest.raises(SpecError, match="Quantization.levels"):
        Quantization(levels=1)


# ------------------------------------------------------------------------- variation


def test_variation_relative_moments():
    g = torch.full((4, 64, 64), 5e-5, dtype=torch.float64)
    out = ProgrammingVariation(0.1, "relative").apply(g, ctx(3))
    n = g.numel()
    assert abs(out.mean().item() - 5e-5) < 4 * 5e-6 / math.sqrt(n)
    assert out.std().item() == pytest.approx(5e-6, rel=0.03)


def test_variation_absolute_and_lognormal_moments():
    g = torch.full((4, 64, 64), 5e-5, dtype=torch.float64)
    out = ProgrammingVariation(0.02, "absolute").apply(g, ctx(4))
    assert out.std().item() == pytest.approx(0.02 * DEV.g_range, rel=0.03)
    out = ProgrammingVariation(0.2, "lognormal").apply(g, ctx(5))
    logr = torch.log(out / g)
    assert abs(logr.mean().item()) < 4 * 0.2 / math.sqrt(g.numel())
    assert logr.std().item() == pytest.approx(0.2, rel=0.03)


def test_variation_clamps_at_zero_and_spares_unused_cells():
    g = torch.full((2, 32, 32), 5e-5)
    out = ProgrammingVariation(2.0, "relative").apply(g, ctx(6))
    assert out.min().item() == 0.0 and (out == 0).float().mean() > 0.2  # P(N < -0.5) = 0.31
    used = torch.zeros(2, 32, 32, dtype=torch.bool)
    used[:, :10] = True
    out = ProgrammingVariation(0.1).apply(g, ctx(6, used=used))
    assert torch.equal(out[~used], g[~used])
    assert (out[used] != g[used]).all()


def test_variation_validation():
    with pytest.raises(SpecError, match="ProgrammingVariation.sigma"):
        ProgrammingVariation(-0.1)
    with pytest.raises(SpecError, match="ProgrammingVariation.mode"):
        ProgrammingVariation(0.1, "gaussian")


# ------------------------------------------------------------------------- read noise


def test_read_noise_fresh_each_call_and_reproducible():
    g = torch.full((2, 16, 16), 5e-5)
    eff = ReadNoise(0.05)
    assert eff.stage == "read"
    c = ctx(7)
    r1, r2 = eff.apply(g, c), eff.apply(g, c)
    assert not torch.equal(r1, r2)
    c2 = ctx(7)
    assert torch.equal(eff.apply(g, c2), r1) and torch.equal(eff.apply(g, c2), r2)
    big = eff.apply(torch.full((4, 64, 64), 5e-5, dtype=torch.float64), ctx(8))
    assert big.std().item() == pytest.approx(0.05 * 5e-5, rel=0.03)
    absn = ReadNoise(0.01, "absolute").apply(torch.full((4, 64, 64), 5e-5), ctx(9))
    assert absn.std().item() == pytest.approx(0.01 * DEV.g_range, rel=0.03)


# ------------------------------------------------------------------------- drift


@pytest.mark.parametrize(
    ("t", "t0", "nu", "want"),
    [
        (10.0, 1.0, 0.1, 10**-0.1),
        (1e4, 1.0, 0.1, 10**-0.4),
        (1e3, 1.0, 0.1, 0.501187),  # MemTorch tutorial value
        (1e3, 1e-12, 0.1, 10**-1.5),  # MemTorch default t0
        (20.0, 20.0, 0.3, 1.0),
        (0.5, 1.0, 0.3, 1.0),
        (100.0, 2.0, 0.0, 1.0),
    ],
)
def test_drift_factor_formula(t, t0, nu, want):
    assert drift_factor(t, t0, nu) == pytest.approx(want, rel=1e-5)
    tens = drift_factor(t, t0, torch.tensor([nu, nu], dtype=torch.float64))
    assert torch.allclose(tens, torch.full((2,), want, dtype=torch.float64), rtol=1e-5)


def test_drift_deterministic_exponent():
    g = torch.rand(2, 8, 8, dtype=torch.float64) * 1e-4
    out = Drift(nu_mean=0.05, nu_std=0.0, t0=2.0).apply(g, ctx(time_s=200.0))
    assert torch.allclose(out, g * 100.0**-0.05, rtol=1e-12)
    assert Drift().stage == "time"


def test_drift_statistics_per_cell():
    g = torch.full((4, 64, 64), 5e-5, dtype=torch.float64)
    t, t0, mean, std = 1e4, 1.0, 0.1, 0.02
    out = Drift(nu_mean=mean, nu_std=std, t0=t0).apply(g, ctx(11, time_s=t))
    logr = torch.log(out / g)
    lt = math.log(t / t0)
    se = std * lt / math.sqrt(g.numel())
    assert abs(logr.mean().item() - (-mean * lt)) < 4 * se
    assert logr.std().item() == pytest.approx(std * lt, rel=0.03)


def test_drift_clips_nu_and_no_change_before_t0():
    g = torch.full((2, 32, 32), 5e-5, dtype=torch.float64)
    out = Drift(nu_mean=0.0, nu_std=0.1).apply(g, ctx(12, time_s=1e3))
    assert (out <= g).all() and (out == g).float().mean() > 0.4  # nu < 0 clipped to 0
    c_early, c_late = ctx(13, time_s=0.5), ctx(13, time_s=1e3)
    eff = Drift(nu_mean=0.1, nu_std=0.02, t0=1.0)
    assert torch.equal(eff.apply(g, c_early), g)
    eff.apply(g, c_late)
    # the exponents are drawn either way: both generators are now in the same state
    assert torch.equal(
        torch.rand(3, generator=c_early.generator), torch.rand(3, generator=c_late.generator)
    )


def test_drift_validation():
    with pytest.raises(SpecError, match="Drift.t0"):
        Drift(t0=0.0)
    with pytest.raises(SpecError, match="Drift.nu_std"):
        Drift(nu_std=-0.1)
    with pytest.raises(SpecError, match="time_s"):
        Drift().apply(torch.ones(1, 2, 2), ctx(time_s=-1.0))


# ------------------------------------------------------------------------- aging


def test_aged_window_law_bounds_scale():
    lo, hi = aged_window(DEV, cycles=1e6, alpha=0.2, beta=0.2, n_ref=1e6)
    assert lo == pytest.approx(1.2e-6) and hi == pytest.approx(8e-5)
    lo, hi = aged_window(DEV, cycles=2.5e5, alpha=0.2, beta=0.3, n_ref=1e6, exponent=0.5)
    assert lo == pytest.approx(1e-6 * (1 + 0.3 * 0.5)) and hi == pytest.approx(1e-4 * (1 - 0.1))
    assert shrink_fraction(8e6, 1e6, 1 / 3) == pytest.approx(2.0)
    assert aged_window(DEV, cycles=0.0) == (DEV.g_min, DEV.g_max)


def test_aged_window_law_window_scale_and_saturation():
    dg = DEV.g_range
    lo, hi = aged_window(DEV, cycles=4e6, alpha=0.1, beta=0.05, n_ref=1e6, scale="window")
    assert lo == pytest.approx(1e-6 + 0.05 * 2 * dg) and hi == pytest.approx(1e-4 - 0.1 * 2 * dg)
    # saturation: the window closes at s* = 1 / (alpha + beta) and stays closed
    lo, hi = aged_window(DEV, cycles=1e12, alpha=0.2, beta=0.3, scale="window")
    assert lo == pytest.approx(hi) and lo == pytest.approx(1e-6 + 0.6 * dg)
    lo, hi = aged_window(DEV, cycles=1e15, alpha=0.2, beta=0.2)  # bounds: s* = dG/(a gmax+b gmin)
    s_star = dg / (0.2 * 1e-4 + 0.2 * 1e-6)
    assert lo == pytest.approx(hi) and hi == pytest.approx(1e-4 * (1 - 0.2 * s_star))
    # monotone: more cycles, narrower window
    widths = [aged_window(DEV, c)[1] - aged_window(DEV, c)[0] for c in (0, 1e3, 1e5, 1e7, 1e9)]
    assert all(a > b for a, b in zip(widths, widths[1:], strict=False))


def test_aging_effect_saturates_cells_at_window_edges():
    g = torch.tensor([[[1e-6, 1.1e-6, 5e-5, 7.9e-5, 8.5e-5, 1e-4]]], dtype=torch.float64)
    out = Aging(cycles=1e6).apply(g, ctx())
    want = torch.tensor([1.2e-6, 1.2e-6, 5e-5, 7.9e-5, 8e-5, 8e-5], dtype=torch.float64)
    assert torch.allclose(out.flatten(), want, rtol=1e-12)
    assert torch.equal(Aging(cycles=0.0).apply(g, ctx()), g)
    with pytest.raises(SpecError, match="Aging.alpha"):
        Aging(cycles=1.0, alpha=1.5)
    with pytest.raises(SpecError, match="Aging.cycles"):
        Aging(cycles=-1.0)


# ------------------------------------------------------------------------- faults


def test_fault_rates_within_binomial_bounds():
    g = torch.full((8, 128, 128), 5e-5)
    out = StuckAtFaults(sa0=0.05, sa1=0.01).apply(g, ctx(21))
    n = g.numel()
    k0 = int((out == DEV.g_min).sum())
    k1 = int((out == DEV.g_max).sum())
    assert binomial_ok(k0, n, 0.05) and binomial_ok(k1, n, 0.01)
    assert k0 + k1 + int((out == 5e-5).sum()) == n


def test_faults_disjoint_and_complete():
    g = torch.full((4, 64, 64), 5e-5)
    out = StuckAtFaults(sa0=0.5, sa1=0.5).apply(g, ctx(22))
    k0 = int((out == DEV.g_min).sum())
    assert int((out == DEV.g_max).sum()) + k0 == g.numel()
    assert binomial_ok(k0, g.numel(), 0.5)


@pytest.mark.parametrize("pattern", ["row", "column"])
def test_faults_line_patterns(pattern):
    g = torch.rand(64, 32, 32, generator=torch.Generator().manual_seed(2)) * 5e-5 + 2e-5
    out = StuckAtFaults(sa0=0.1, sa1=0.05, pattern=pattern).apply(g, ctx(23))
    dim = -1 if pattern == "row" else -2  # cells along one line
    stuck0 = (out == DEV.g_min).all(dim)
    stuck1 = (out == DEV.g_max).all(dim)
    changed = (out != g).any(dim)
    assert torch.equal(changed, stuck0 | stuck1)  # a line is either intact or all stuck
    lines = stuck0.numel()
    assert binomial_ok(int(stuck0.sum()), lines, 0.1)
    assert binomial_ok(int(stuck1.sum()), lines, 0.05)


def test_faults_validation():
    with pytest.raises(SpecError, match="StuckAtFaults.sa0"):
        StuckAtFaults(sa0=-0.1)
    with pytest.raises(SpecError, match="at most 1"):
        StuckAtFaults(sa0=0.6, sa1=0.5)
    with pytest.raises(SpecError, match="StuckAtFaults.pattern"):
        StuckAtFaults(sa0=0.1, pattern="diagonal")


# ------------------------------------------------------------------------- PCM


def test_pcm_coefficient_functions():
    x = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    want = torch.tensor([0.26348, 0.26348 + 0.9825 - 0.293275, 1.05538], dtype=torch.float64)
    assert torch.allclose(pcm_prog_sigma(x), want / 25.0, rtol=1e-9)
    mu, sd = pcm_drift_nu_stats(torch.tensor([1.0, 0.1, 1e-9], dtype=torch.float64))
    assert torch.allclose(mu, torch.tensor([0.049, 0.0155 * math.log(10) + 0.0244, 0.1]).double())
    assert torch.allclose(sd, torch.tensor([0.008, 0.0125 * math.log(10) - 0.0059, 0.045]).double())
    t = 1000.0 + 20.0
    q = pcm_read_sigma(torch.tensor([1.0, 1e-6], dtype=torch.float64), t, 250e-9)
    root = math.sqrt(math.log((t + 250e-9) / 500e-9))
    assert torch.allclose(q, torch.tensor([0.0088 * root, 0.2 * root], dtype=torch.float64))


def test_pcm_programming_noise_std():
    g = torch.full((4, 64, 64), 0.5 * DEV.g_max, dtype=torch.float64)
    eff = PCMStatistical(read_noise_scale=0.0, drift_scale=0.0)
    out = eff.apply(g, ctx(31, time_s=0.0))
    sigma = (0.26348 + 1.9650 * 0.5 - 1.1731 * 0.25) / 25.0 * DEV.g_max
    assert out.std().item() == pytest.approx(sigma, rel=0.03)
    assert abs(out.mean().item() - g[0, 0, 0].item()) < 4 * sigma / 64


def test_pcm_drift_mean_and_read_noise():
    g = torch.full((4, 64, 64), DEV.g_max, dtype=torch.float64)  # x = 1: nu ~ N(0.049, 0.008)
    t_s = 1e4
    out = PCMStatistical(prog_noise_scale=0.0, read_noise_scale=0.0).apply(g, ctx(32, time_s=t_s))
    logr = torch.log(out / g)
    lt = math.log((t_s + 20.0) / 20.0)
    assert logr.mean().item() == pytest.approx(-0.049 * lt, rel=0.01)
    assert logr.std().item() == pytest.approx(0.008 * lt, rel=0.05)
    # read noise only (no drift): relative std = Q_s sqrt(ln((t + t_read) / (2 t_read)))
    out = PCMStatistical(prog_noise_scale=0.0, drift_scale=0.0).apply(g, ctx(33, time_s=t_s))
    want = 0.0088 * math.sqrt(math.log((t_s + 20.0 + 250e-9) / 500e-9))
    assert (out / g - 1).std().item() == pytest.approx(want, rel=0.03)


def test_pcm_used_mask_and_determinism():
    g = torch.full((2, 16, 16), 2e-5)
    used = torch.zeros(2, 16, 16, dtype=torch.bool)
    used[:, :, :4] = True
    eff = PCMStatistical()
    a = eff.apply(g, ctx(34, used=used, time_s=100.0))
    b = eff.apply(g, ctx(34, used=used, time_s=100.0))
    assert torch.equal(a, b) and torch.equal(a[~used], g[~used]) and (a[used] != g[used]).all()
    assert (a >= 0).all() and eff.stage == "time"
    with pytest.raises(SpecError, match="PCMStatistical.t0"):
        PCMStatistical(t0=0.0)


# ------------------------------------------------------------------------- converters


def test_quantize_uniform_hand_cases():
    x = torch.tensor([-2.0, -0.74, -0.26, 0.24, 0.76, 1.2, 9.0])
    q = quantize_uniform(x, bits=3, full_scale=1.5)  # 3 steps of 0.5 per side
    assert torch.equal(q, torch.tensor([-1.5, -0.5, -0.5, 0.0, 1.0, 1.0, 1.5]))
    x = torch.tensor([-1.0, 0.4, 1.6, 2.6, 7.0])
    q = quantize_uniform(x, bits=2, full_scale=3.0, signed=False)  # codes 0..3
    assert torch.equal(q, torch.tensor([0.0, 0.0, 2.0, 3.0, 3.0]))
    fs = torch.tensor([1.0, 0.0])  # per-column full scale; a zero column reads 0
    q = quantize_uniform(torch.tensor([[0.3, 0.3]]), bits=4, full_scale=fs)
    assert torch.allclose(q, torch.tensor([[2 / 7, 0.0]]))


@settings(max_examples=60, deadline=None)
@given(
    x=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=20),
    bits=st.integers(2, 12),
    fs=st.floats(0.01, 5.0),
)
def test_quantize_uniform_properties(x, bits, fs):
    t = torch.tensor(x, dtype=torch.float64)
    q = quantize_uniform(t, bits, fs)
    n = 2 ** (bits - 1) - 1
    step = fs / n
    assert (q.abs() <= fs * (1 + 1e-12)).all()
    codes = q / step
    assert torch.allclose(codes, codes.round(), atol=1e-6)
    assert ((q - t.clamp(-fs, fs)).abs() <= step / 2 * (1 + 1e-9)).all()


def test_converter_validation():
    with pytest.raises(SpecError, match="DAC.bits"):
        DAC(0)
    with pytest.raises(SpecError, match="ADC.bits"):
        ADC(33)
    with pytest.raises(SpecError, match="ADC.full_scale"):
        ADC(8, full_scale=-1.0)
    with pytest.raises(SpecError, match="signed"):
        quantize_uniform(torch.ones(2), bits=1, full_scale=1.0)
    assert torch.equal(
        quantize_uniform(torch.tensor([0.2, 0.7]), 1, 1.0, signed=False), torch.tensor([0.0, 1.0])
    )
    with pytest.raises(SpecError, match="full_scale"):
        ADC(8)(torch.ones(3))
    assert torch.allclose(ADC(3, full_scale=3.0)(torch.tensor([1.2])), torch.tensor([1.0]))
    assert torch.allclose(DAC(3)(torch.tensor([0.6]), 1.5), torch.tensor([0.5]))


# ------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    "effect",
    [
        ProgrammingVariation(0.1),
        ReadNoise(0.05),
        Drift(0.1, 0.02),
        StuckAtFaults(0.1, 0.1),
        StuckAtFaults(0.1, 0.1, "column"),
        PCMStatistical(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_same_seed_same_output(effect):
    g = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5)) * 9e-5 + 1e-6
    a = effect.apply(g, ctx(41, time_s=1e3))
    b = effect.apply(g, ctx(41, time_s=1e3))
    c = effect.apply(g, ctx(42, time_s=1e3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == g.shape and a.dtype == g.dtype
