"""Per-tile ADC kernels (issue #20): exact against an independent per-band reference, chunking
and calibration independent of the chunk size, autograd, batched trials == sequential trials.

Exactness: with dyadic slice values and small integer inputs every partial sum is exact in
float32 whatever the summation order, so the only roundings are the quantiser's (compared
bitwise through the codes) and the single final scale (<= 1 ulp).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xbarprune.analog import convert, evaluate, trial_generator
from xbarprune.analog import kernels as K
from xbarprune.errors import ConfigError
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal.converters import levels_per_side, quantize_uniform
from xbarprune.hardware.nonideal.model import (
    Drift,
    NonIdealityConfig,
    NonIdealityModel,
    ProgrammingVariation,
    Quantization,
    ReadNoise,
    StuckAtFaults,
)
from xbarprune.mapping import map_model, pack_columns, permuted, weight_to_matrix
from xbarprune.mapping.layout import Block


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 7, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 3 * 3, 11),
        nn.ReLU(),
        nn.Linear(11, 4),
    ).eval()


def test_adc_codes_are_the_quantiser_codes_bitwise():
    g = torch.Generator().manual_seed(0)
    fs, bits = 0.7, 6
    n = levels_per_side(bits)
    step = fs / n
    p = torch.randn(20000, generator=g)
    # values on and next to the rounding boundaries (k + 1/2) steps and beyond full scale
    half = (torch.arange(-n - 3, n + 3) + 0.5) * step
    p = torch.cat([p, half, torch.nextafter(half, half + 1), torch.nextafter(half, half - 1)])
    codes = K.adc_codes_(p.clone(), bits, fs)
    assert torch.equal(codes, torch.round(codes))  # integers
    assert int(codes.abs().max()) == n
    assert torch.equal(codes.mul_(fs / n), quantize_uniform(p, bits, fs))


def _reference(layer, x: torch.Tensor) -> torch.Tensor:
    """Independent per-tile model: for every block and every band of ``xbar.rows`` of its
    rows, the partial sums of every column and slice in float64, ADC codes from
    ``quantize_uniform``, shift-and-add with L**j, one final scale."""
    m = layer.inner
    lay = layer.layout
    xbar = lay.crossbar
    k = xbar.cells_per_weight
    R, C = lay.matrix_shape
    if isinstance(m, nn.Conv2d):
        X = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride).double()  # (B, R, L)
    else:
        X = x.double().unsqueeze(2)
    S = layer._slices.double()  # (k, R, C)
    fs, bits = float(layer.adc_fs), layer.adc_bits
    n = levels_per_side(bits)
    L = layer.device_spec.levels
    out = torch.zeros(X.shape[0], C, X.shape[2], dtype=torch.float64)
    for b in lay.blocks:
        mask = torch.ones(len(b.rows), len(b.cols)) if b.mask is None else b.mask.double()
        for a in range(0, len(b.rows), xbar.rows):
            br = b.rows[a : a + xbar.rows]
            W = S[:, br][:, :, b.cols] * mask[a : a + xbar.rows]  # (k, nbr, c)
            P = torch.einsum("brl,krc->bkcl", X[:, br], W)
            q = quantize_uniform(P.float(), bits, fs)
            codes = torch.round(q.double() / (fs / n))
            for j in range(k):
                out[:, b.cols] += codes[:, j] * float(L) ** j
    unit = 1.0 if k == 1 else (L - 1) / (float(L) ** k - 1)
    y = (out * (fs / n * layer._w_max * layer._gain * unit)).float()
    if xbar.encoding == "offset":
        placed = lay.placed.double()
        y = (2 * y.double() - torch.einsum("brl,rc->bcl", X, placed) * layer._w_max).float()
    if isinstance(m, nn.Conv2d):
        ho = (
            x.shape[2] + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1
        ) // m.stride[0] + 1
        return y.view(x.shape[0], C, ho, -1)
    return y.squeeze(2)


def _dyadic_layer(net, lay, idx: int, bits: int = 5, levels: int = 17):
    """The analog layer of module ``idx``, programmed ideally, with dyadic slices."""
    cfg = NonIdealityModel.from_config(NonIdealityConfig(adc_bits=bits))
    am = convert(net, lay, DeviceSpec(levels=levels), cfg)
    am.program(trial_generator(0, 0))
    layer = am.model[idx]
    g = torch.Generator().manual_seed(idx)
    kk = layer.layout.crossbar.cells_per_weight
    R, C = layer.layout.matrix_shape
    s = torch.randint(0, levels, (kk, R, C), generator=g).float() / (levels - 1)
    layer._slices = s * layer.layout.placed
    layer._conv_w = None
    return layer


def _masked(lay):
    """Two overlapping blocks with complementary checkerboard masks (holes) over the matrix."""
    R, C = lay.matrix_shape
    chk = (torch.arange(R).view(-1, 1) + torch.arange(C).view(1, -1)) % 2 == 0
    rows, cols = torch.arange(R), torch.arange(C)
    return lay.with_blocks([Block(rows, cols, chk), Block(rows.flip(0), cols, (~chk).flip(0))])


XBARS = [
    CrossbarSpec(16, 8),
    CrossbarSpec(16, 10, encoding="offset"),
    CrossbarSpec(16, 16, cells_per_weight=2),
    CrossbarSpec(16, 20, cells_per_weight=2, encoding="offset"),
]


@pytest.mark.parametrize("xbar", XBARS, ids=["diff", "offset", "k2", "k2-offset"])
@pytest.mark.parametrize("variant", ["dense", "permuted", "packed", "masked"])
@pytest.mark.parametrize("idx", [2, 5])  # conv 6 -> 7 (matrix 54 x 7), linear 63 -> 11
def test_kernels_equal_the_per_band_reference(xbar, variant, idx):
    net = _net()
    with torch.no_grad():
        net[idx].weight[1::3] *= 0  # dead columns: packings keep different column sets
    lay = map_model(net, xbar)
    name = str(idx)
    if variant == "permuted":
        g = torch.Generator().manual_seed(1)
        R, C = lay[name].matrix_shape
        lay = lay.replace(
            permuted(lay[name], torch.randperm(R, generator=g), torch.randperm(C, generator=g))
        )
    elif variant == "packed":
        lay = lay.replace(pack_columns(lay[name], weight_to_matrix(net[idx].weight.detach())))
    elif variant == "masked":
        lay = lay.replace(_masked(lay[name]))
    layer = _dyadic_layer(net, lay, idx)
    g = torch.Generator().manual_seed(2)
    shape = (5, 6, 8, 8) if idx == 2 else (5, 63)
    x = torch.randint(-3, 4, shape, generator=g).float()
    layer.adc_fs = 2.3  # some codes clip, most do not
    with torch.no_grad():
        y = layer(x)
    ref = _reference(layer, x)
    bias = layer.inner.bias.view(1, -1, 1, 1) if idx == 2 else layer.inner.bias
    torch.testing.assert_close(y - bias, ref, rtol=2.4e-7, atol=1e-6)
    if idx == 2 and variant in ("dense", "packed"):
        assert layer._conv_bands is not None  # the grouped-convolution kernel ran


def test_codes_sum_is_exact_beyond_float32_and_chunking_changes_nothing():
    """24-bit ADC: code sums exceed 2**24 (float64 accumulation); any chunk size gives the
    same bits and the same whole-batch calibration."""
    net = _net()
    lay = map_model(net, CrossbarSpec(16, 8))
    outs, fss = [], []
    for chunk in (1, 100, None):
        layer = _dyadic_layer(net, lay, 2, bits=24)
        layer.adc_fs = None
        x = torch.randint(-3, 4, (6, 6, 8, 8), generator=torch.Generator().manual_seed(3)).float()
        with torch.no_grad():
            outs.append(K.tile_conv(layer, x, chunk_elems=chunk))
        fss.append(layer.adc_fs)
    assert K._acc_dtype(layer, 4, torch.float32) == torch.float64
    assert fss[0] == fss[1] == fss[2]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    torch.testing.assert_close(outs[2], _reference(layer, x), rtol=2.4e-7, atol=0)


def test_calibration_is_the_largest_partial_sum_of_the_whole_batch():
    net = _net()
    layer = _dyadic_layer(net, map_model(net, CrossbarSpec(16, 8)), 2)
    layer.adc_fs = None
    x = torch.randint(-3, 4, (4, 6, 8, 8), generator=torch.Generator().manual_seed(4)).float()
    x[3] *= 2  # the largest partial sum is in the last image (a later chunk)
    with torch.no_grad():
        K.tile_conv(layer, x, chunk_elems=1)
    X = F.unfold(x, 3, 1, 0, 2)
    S = layer._slices[0]
    want = max(
        float((X[:, a : a + 16].transpose(1, 2) @ S[a : a + 16]).abs().max())
        for a in range(0, 54, 16)
    )
    assert layer.adc_fs == want


def test_tile_path_keeps_the_straight_through_gradient():
    net = _net()
    cfg = NonIdealityModel.from_config(NonIdealityConfig(adc_bits=6, dac_bits=6))
    am = convert(net, map_model(net, CrossbarSpec(16, 8)), DeviceSpec(), cfg)
    am.program(trial_generator(0, 0))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y0 = am(x)
    xg = x.clone().requires_grad_(True)
    y = am(xg)
    assert torch.equal(y.detach(), y0)
    y.sum().backward()
    assert xg.grad is not None and bool(xg.grad.abs().sum() > 0)


WEIGHT_LEVEL = NonIdealityConfig(
    quantization=Quantization(),
    variation=ProgrammingVariation(sigma=0.3, mode="relative"),
    faults=StuckAtFaults(sa0=0.05, sa1=0.05),
    drift=Drift(nu_mean=0.1, nu_std=0.03, t0=1.0),
    dac_bits=6,
    drift_compensation=True,
)


def _data(n=48, seed=6):
    """Inputs labelled by the digital network itself, so the accuracy measures agreement."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = _net()(x).argmax(1)
    return [(x[:24], y[:24]), (x[24:], y[24:])]


def test_batched_trials_equal_sequential_trials():
    net = _net()
    lay = map_model(net, CrossbarSpec(16, 8))
    ni = NonIdealityModel.from_config(WEIGHT_LEVEL)
    am = convert(net, lay, DeviceSpec(), ni)
    x = _data()[0][0]
    gens = lambda: [trial_generator(3, i) for i in range(5)]  # noqa: E731
    with torch.no_grad():
        am.program_trials(gens())
        yb = am(x.repeat_interleave(5, 0)).view(24, 5, -1)
        assert float((yb[:, 0] - yb[:, 1]).abs().max()) > 1e-3  # the trials differ
        for i, g in enumerate(gens()):
            am.program(g)
            torch.testing.assert_close(yb[:, i], am(x), rtol=1e-5, atol=1e-6)
    kw = dict(trials=7, seed=3, times=(1.0, 3600.0))
    seq = evaluate(net, _data(), lay, DeviceSpec(), ni, **kw)
    bat = evaluate(net, _data(), lay, DeviceSpec(), ni, batch_trials=3, **kw)
    for a, b in zip(seq, bat, strict=True):
        assert a.per_trial == b.per_trial and len(a.per_trial) == 7


def test_batched_trials_fall_back_when_they_do_not_apply():
    net = _net()
    lay = map_model(net, CrossbarSpec(16, 8))
    noisy = NonIdealityConfig(**{**WEIGHT_LEVEL.__dict__, "read_noise": ReadNoise(sigma=0.02)})
    ni = NonIdealityModel.from_config(noisy)
    assert not convert(net, lay, DeviceSpec(), ni).can_batch_trials()
    a = evaluate(net, _data(), lay, DeviceSpec(), ni, trials=3)
    b = evaluate(net, _data(), lay, DeviceSpec(), ni, trials=3, batch_trials=3)
    assert a[0].per_trial == b[0].per_trial
    with pytest.raises(ConfigError, match="batch_trials"):
        evaluate(net, _data(), lay, DeviceSpec(), ni, trials=3, batch_trials=0)


@pytest.mark.parametrize("idx", [2, 5])
def test_pre_adc_hook_sees_every_partial_sum(idx):
    """A hook doubling the partial sums with a doubled ADC full scale gives the same codes and
    twice the output, bit for bit (powers of two scale exactly); without it nothing changes."""
    net = _net()
    lay = map_model(net, CrossbarSpec(16, 8))
    layer = _dyadic_layer(net, lay, idx, bits=6)
    shape = (5, 6, 8, 8) if idx == 2 else (5, 63)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(8))
    layer.adc_fs = 1.7
    kernel = K.tile_conv if idx == 2 else K.tile_linear
    with torch.no_grad():
        y = kernel(layer, x)
        layer.pre_adc_hook = lambda p: p * 2
        layer.adc_fs = 3.4
        y2 = kernel(layer, x)
    assert torch.equal(y2, 2 * y)
    assert not torch.equal(y, torch.zeros_like(y))
