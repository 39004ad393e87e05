"""Peripheral I/O model (aihwkit IOParameters): each effect on hand-computed cases, the analog
layer's two paths against explicit computations and against digital, validation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xbarprune.analog import convert, trial_generator
from xbarprune.config import from_dict
from xbarprune.errors import ConfigError, SpecError, XbarpruneError
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal import NonIdealityConfig, NonIdealityModel, PCMStatistical, preset
from xbarprune.hardware.nonideal.io import (
    IOConfig,
    io_mvm,
    manage_input,
    output_noise_and_bound,
    prepare_input,
    readout_level,
    split_sizes,
)
from xbarprune.mapping import map_model
from xbarprune.models import build_model

#: every noise off, infinite resolution, no bound: the periphery must be the identity
CLEAN = IOConfig(inp_res=None, out_res=None, out_bound=None, out_noise=0.0)
DEV = DeviceSpec(g_min=0.0, g_max=25e-6)


def test_defaults_are_aihwkit_forward():
    io = IOConfig()
    assert io.inp_res == pytest.approx(1 / 126) and io.out_res == pytest.approx(1 / 510)
    assert (io.inp_bound, io.out_bound, io.out_noise) == (1.0, 12.0, 0.06)
    assert (io.noise_management, io.bound_management) == ("abs_max", "iterative")
    assert (io.max_bm_factor, io.max_bm_res) == (1000, 0.25)
    assert io.inp_step == pytest.approx(2 / 126) and io.out_step == pytest.approx(24 / 510)
    assert IOConfig(inp_res=126).inp_step == pytest.approx(2 / 126)  # steps form
    p = preset("aihwkit-default")
    assert p.io == io and p.pcm == PCMStatistical() and p.drift_compensation


def test_noise_management_abs_max_per_vector():
    x = torch.tensor([[0.5, -2.0, 1.0], [0.0, 0.0, 0.0], [0.1, 0.3, -0.2]])
    s = manage_input(x, IOConfig())
    assert s.flatten().tolist() == pytest.approx([2.0, 1.0, 0.3])  # zero vector -> 1
    assert manage_input(x, IOConfig(nm_thres=0.5)).flatten().tolist() == pytest.approx(
        [0.5, 1, 0.3]
    )
    assert manage_input(x, IOConfig(noise_management="none")).tolist() == [[1.0]] * 3
    # along dim 1 of an unfolded (B, R, L) input: one scale per column
    xt = x.t().unsqueeze(0)  # (1, 3, 3)
    assert manage_input(xt, IOConfig(), dim=1).flatten().tolist() == pytest.approx([2, 1, 0.3])


def test_dac_quantises_clips_and_scales():
    # inp_res 1/4 over [-1, 1]: step 0.5
    io = IOConfig(inp_res=0.25)
    x = torch.tensor([[0.3, -0.8, 0.74, 3.0]])
    u = prepare_input(x, 1.0, io, None)
    assert u.tolist() == [[0.5, -1.0, 0.5, 1.0]]  # round(0.6)=1, round(-1.6)=-2, clip 3 -> 1
    u2 = prepare_input(x, 2.0, io, None)  # x / 2 = 0.15, -0.4, 0.37, 1.5
    assert u2.tolist() == [[0.0, -0.5, 0.5, 1.0]]
    assert prepare_input(x, 1.0, CLEAN, None).flatten().tolist() == pytest.approx(
        [0.3, -0.8, 0.74, 1.0]
    )


def test_adc_output_bound_and_resolution():
    io = IOConfig(out_res=0.1, out_bound=1.0, out_noise=0.0)  # step 0.2 over [-1, 1]
    v = torch.tensor([[0.33, -0.29], [1.5, 0.5], [-1.3, 0.0]])
    q, clipped = output_noise_and_bound(v, io, None)
    assert q.flatten().tolist() == pytest.approx([0.4, -0.2, 1.0, 0.4, -1.0, 0.0])
    assert clipped.tolist() == [False, True, True]
    # a value that rounds onto the bound does not count as clipping (aihwkit tests v_q)
    q, clipped = output_noise_and_bound(torch.tensor([[1.05]]), io, None)
    assert q.item() == pytest.approx(1.0) and not clipped.item()


def test_output_noise_is_gaussian_of_out_noise_std():
    io = IOConfig(out_res=None, out_bound=None, out_noise=0.06)
    g = torch.Generator().manual_seed(0)
    v, _ = output_noise_and_bound(torch.zeros(200_000, 1), io, g)
    assert float(v.std()) == pytest.approx(0.06, rel=0.01) and abs(float(v.mean())) < 1e-3


def test_iterative_bound_management_rescales_clipping_vectors_only():
    w = torch.tensor([[1.0], [1.0]])
    x = torch.tensor([[1.0, 1.0], [0.1, -0.1], [0.2, 0.1]])
    io = IOConfig(inp_res=None, out_res=None, out_bound=0.6, out_noise=0.0)
    # vector 0: r=1 -> v=2 clips, r=2 -> 1 clips, r=4 -> 0.5 passes: y = 0.5 * 4 = 2
    # vector 1: v = 0; vector 2: s=0.2, u=(1, .5), v=1.5 clips; r=2: .75 clips; r=4: .375
    y = io_mvm(x, w, io, None)
    assert y.flatten().tolist() == pytest.approx([2.0, 0.0, 0.3])
    # without bound management the outputs clip: 0.6 * s
    y = io_mvm(x, w, replace(io, bound_management="none"), None)
    assert y.flatten().tolist() == pytest.approx([0.6, 0.0, 0.12])
    # max_bm_factor 1: r=2 is the last round (2 > 1): y = 0.6 * 2 (still clipped)
    y = io_mvm(x, w, replace(io, max_bm_factor=1), None)
    assert y.flatten().tolist() == pytest.approx([1.2, 0.0, 0.24])
    # max_bm_res / inp_step bounds r: inp_res 1/8 (step 0.25), max_bm_res 0.4: stop once
    # r > 1.6, i.e. after r = 2: u = 0.5, v = 1 clips to 0.6, y = 1.2
    y = io_mvm(x[:1], w, replace(io, inp_res=0.125, max_bm_res=0.4), None)
    assert y.item() == pytest.approx(1.2)
    # max_bm_res 0.5: limit 2, so r = 4 runs too: u = 0.25 (on the DAC grid), v = 0.5, y = 2
    y = io_mvm(x[:1], w, replace(io, inp_res=0.125, max_bm_res=0.5), None)
    assert y.item() == pytest.approx(2.0)


def test_io_mvm_dim1_equals_rows():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 5, generator=g)  # (B, R, L)
    w = torch.randn(7, 3, generator=g) * 0.5
    io = IOConfig(out_noise=0.0, out_bound=1.5)  # coarse enough that some vectors clip
    a = io_mvm(x, w, io, None, dim=1)
    b = io_mvm(x.transpose(1, 2).reshape(-1, 7), w, io, None).view(2, 5, 3).transpose(1, 2)
    assert torch.allclose(a, b, atol=1e-6)
    with torch.enable_grad():  # the reference path (straight-through gradients) agrees
        c = io_mvm(x.requires_grad_(), w, io, None, dim=1)
    assert torch.allclose(a, c.detach(), atol=1e-6)


def test_split_sizes_like_aihwkit():
    assert split_sizes(10, 4) == [4, 3, 3]
    assert split_sizes(1024, 512) == [512, 512] and split_sizes(513, 512) == [257, 256]
    assert split_sizes(400, 512) == [400] and split_sizes(400, 0) == [400]


def test_readout_level_is_mean_abs_weight_without_noise():
    w = torch.tensor([[0.5, -0.25], [0.0, 1.0], [-0.75, 0.0]])
    assert readout_level(w, CLEAN, None) == pytest.approx(2.5 / 6)
    assert readout_level(torch.zeros(3, 2), CLEAN, None) == pytest.approx(1e-4)


def _lenet():
    model = build_model("lenet5", in_channels=1, image_size=28, seed=3).eval()
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    lay = map_model(model, CrossbarSpec(128, 128, cells_per_weight=1, encoding="differential"))
    return model, x, lay


@pytest.mark.parametrize("per_tile", [False, True])
def test_aihwkit_default_without_noise_equals_digital(per_tile):
    model, x, lay = _lenet()
    cfg = replace(
        preset("aihwkit-default"),
        pcm=PCMStatistical(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0),
        io=replace(CLEAN, per_tile=per_tile),
    )
    am = convert(model, lay, DEV, NonIdealityModel.from_config(cfg))
    with torch.no_grad():
        y0 = model(x)
        for t in (1.0, 3.15e7):
            am.program(trial_generator(0, 0), t)
            assert (am(x) - y0).abs().max() < 1e-6 * max(1.0, float(y0.abs().max()))


def test_conv_weight_level_equals_explicit_per_patch_mvm():
    model, x, lay = _lenet()
    io = IOConfig(out_noise=0.0, out_bound=0.8)  # DAC, ADC, clipping and re-scaling all act
    cfg = NonIdealityConfig(io=io)
    am = convert(model, lay, DEV, NonIdealityModel.from_config(cfg))
    am.program(trial_generator(0, 0))
    conv = am.model.features.conv2
    xin = torch.relu(torch.randn(4, 6, 14, 14, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        y = conv(xin)
        cols = F.unfold(xin, 5)  # (B, R, L)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        ref = io_mvm(rows, conv._w_eff, io, None).view(4, 100, 16).transpose(1, 2)
        ref = ref.reshape(4, 16, 10, 10) + conv.inner.bias.view(1, -1, 1, 1)
        assert torch.allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize(
    ("k", "stride", "padding", "dilation"), [(5, 1, 2, 1), (3, 2, 1, 1), (3, 1, 0, 2), (2, 3, 1, 2)]
)
def test_unfold_equals_torch_unfold(k, stride, padding, dilation):
    from xbarprune.analog.periphery import unfold

    conv = nn.Conv2d(3, 4, k, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 3, 11, 9)
    ref = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)
    assert torch.equal(unfold(conv, x), ref)
    assert torch.equal(
        unfold(conv, x[:, :, :, 1:]), F.unfold(x[:, :, :, 1:], k, dilation, padding, stride)
    )


def test_max_input_size_splits_into_tiles_with_own_periphery():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(10, 3)).eval()
    lay = map_model(lin, CrossbarSpec(16, 16, cells_per_weight=1, encoding="differential"))
    io = IOConfig(inp_res=0.125, out_res=None, out_bound=None, out_noise=0.0, max_input_size=4)
    am = convert(lin, lay, DEV, NonIdealityModel.from_config(NonIdealityConfig(io=io)))
    am.program(trial_generator(0, 0))
    x = torch.randn(5, 10)
    w = lin[0].weight.t()
    ref = sum(io_mvm(x[:, a:b], w[a:b], io, None) for a, b in ((0, 4), (4, 7), (7, 10)))
    with torch.no_grad():
        assert torch.allclose(am(x), ref + lin[0].bias, atol=1e-6)
        whole = io_mvm(x, w, io, None) + lin[0].bias
        assert not torch.allclose(am(x), whole, atol=1e-4)  # per-chunk scaling differs


def test_noise_is_deterministic_given_the_seed():
    model, x, lay = _lenet()
    am = convert(model, lay, DEV, NonIdealityModel.from_config("aihwkit-default"))
    with torch.no_grad():
        am.program(trial_generator(0, 0), 3600.0)
        a1, a2 = am(x), am(x)  # fresh output noise at every forward
        am.program(trial_generator(0, 0), 3600.0)
        b1 = am(x)
        am.program(trial_generator(0, 1), 3600.0)
        c1 = am(x)
    assert torch.equal(a1, b1) and not torch.equal(a1, a2) and not torch.equal(a1, c1)


def test_drift_gain_read_out_through_the_periphery():
    """aihwkit's global compensation reads the one-hot vectors through the noisy I/O: the
    additive output noise floors the read-out, so the gain is below the exact one."""
    model, x, lay = _lenet()
    am = convert(model, lay, DEV, NonIdealityModel.from_config("aihwkit-default"))
    am.program(trial_generator(0, 0), 3.15e7)
    fc1 = am.model.classifier.fc1
    assert fc1._io_gains is not None and fc1._io_gains.shape == (1,)
    assert 1.0 < float(fc1._io_gains[0]) < fc1._gain  # exact gain: drift only
    clean = replace(preset("aihwkit-default"), io=CLEAN)
    am = convert(model, lay, DEV, NonIdealityModel.from_config(clean))
    am.program(trial_generator(0, 0), 3.15e7)
    fc1 = am.model.classifier.fc1
    assert float(fc1._io_gains[0]) == pytest.approx(fc1._gain, rel=1e-5)


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"out_noise": -0.1}, "io.out_noise"),
        ({"inp_noise": -1}, "io.inp_noise"),
        ({"out_bound": 0}, "io.out_bound"),
        ({"out_bound": -12}, "io.out_bound"),
        ({"inp_res": 0}, "io.inp_res"),
        ({"out_res": -0.5}, "io.out_res"),
        ({"inp_bound": 0}, "io.inp_bound"),
        ({"noise_management": "abs_maxx"}, "noise_management"),
        ({"max_bm_factor": 0}, "io.max_bm_factor"),
        ({"out_bound": None, "out_res": 0.01}, "io.out_bound"),
        ({"typo": 1}, "unknown config key"),
    ],
)
def test_invalid_io_settings_name_the_field(section, match):
    with pytest.raises(XbarpruneError, match=match):
        m = NonIdealityModel.from_config({"io": section})
        m.io.out_step  # noqa: B018  (an ADC resolution without a range fails here)


def test_io_yaml_and_conflicts():
    cfg = from_dict(NonIdealityConfig, {"io": {"out_noise": 0.0, "per_tile": True}}, "nonideal")
    assert cfg.io == IOConfig(out_noise=0.0, per_tile=True)
    with pytest.raises(ConfigError, match="nonideal.*dac_bits"):
        from_dict(NonIdealityConfig, {"io": {}, "dac_bits": 8}, "nonideal")
    with pytest.raises(SpecError, match="adc_bits"):
        NonIdealityConfig(io=IOConfig(), adc_bits=8)
    assert not NonIdealityModel.from_config(NonIdealityConfig(io=CLEAN)).is_ideal
    assert "io" in NonIdealityModel.from_config("aihwkit-default").describe()
