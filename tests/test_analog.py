"""Analog inference: ideal == digital, determinism, per-tile ADC path, drift compensation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xbarprune.analog import convert, evaluate, trial_generator
from xbarprune.hardware import CrossbarSpec, DeviceSpec
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
from xbarprune.mapping.permute import pack_layout

IDEAL = NonIdealityModel.from_config(NonIdealityConfig())


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(5, 7, 3, stride=2, dilation=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 3 * 3, 11),
        nn.ReLU(),
        nn.Linear(11, 4),
    ).eval()


X = torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "xbar",
    [CrossbarSpec(8, 8), CrossbarSpec(16, 10, encoding="offset"), CrossbarSpec(7, 9)],
)
def test_ideal_analog_equals_digital(xbar):
    net = _net()
    am = convert(net, map_model(net, xbar), DeviceSpec(), IDEAL)
    am.program(trial_generator(0, 0))
    torch.testing.assert_close(am(X), net(X), rtol=1e-4, atol=1e-5)


def test_ideal_tile_adc_path_with_fine_adc_equals_digital():
    net = _net()
    cfg = NonIdealityConfig(adc_bits=24)
    for xbar in (CrossbarSpec(8, 8), CrossbarSpec(8, 9, encoding="offset")):
        am = convert(net, map_model(net, xbar), DeviceSpec(), NonIdealityModel.from_config(cfg))
        am.program(trial_generator(0, 0))
        torch.testing.assert_close(am(X), net(X), rtol=1e-4, atol=1e-4)


def test_bit_sliced_tile_adc_matches_weight_level():
    net = _net()
    xbar = CrossbarSpec(8, 8, cells_per_weight=2)
    lay = map_model(net, xbar)
    w = convert(net, lay, DeviceSpec(levels=4), IDEAL)
    t = convert(
        net, lay, DeviceSpec(levels=4), NonIdealityModel.from_config(NonIdealityConfig(adc_bits=24))
    )
    w.program(trial_generator(0, 0))
    t.program(trial_generator(0, 0))
    torch.testing.assert_close(t(X), w(X), rtol=1e-4, atol=1e-4)


def test_coarse_adc_changes_output_but_is_deterministic():
    net = _net()
    cfg = NonIdealityModel.from_config(NonIdealityConfig(adc_bits=3, dac_bits=4))
    am = convert(net, map_model(net, CrossbarSpec(8, 8)), DeviceSpec(), cfg)
    am.program(trial_generator(0, 0))
    y1 = am(X)
    assert (y1 - net(X)).abs().max() > 1e-3
    am.program(trial_generator(0, 0))
    torch.testing.assert_close(am(X), y1)


def test_layout_permutation_and_packing_keep_ideal_outputs():
    net = _net()
    xbar = CrossbarSpec(8, 6)
    lay = map_model(net, xbar)
    with torch.no_grad():
        net[5].weight[:, :20] = 0  # zero some inputs of the FC layer
    fc = lay["5"]
    g = torch.Generator().manual_seed(0)
    perm = permuted(
        fc,
        torch.randperm(fc.matrix_shape[0], generator=g),
        torch.randperm(fc.matrix_shape[1], generator=g),
    )
    mat = weight_to_matrix(net[5].weight.detach())
    packed = pack_columns(fc, mat)
    for variant in (perm, packed):
        am = convert(net, lay.replace(variant), DeviceSpec(), IDEAL)
        am.program(trial_generator(0, 0))
        torch.testing.assert_close(am(X), net(X), rtol=1e-4, atol=1e-5)
        cfg = NonIdealityModel.from_config(NonIdealityConfig(adc_bits=24))
        am = convert(net, lay.replace(variant), DeviceSpec(), cfg)
        am.program(trial_generator(0, 0))
        torch.testing.assert_close(am(X), net(X), rtol=1e-4, atol=1e-4)


NOISY = NonIdealityConfig(
    quantization=Quantization(),
    variation=ProgrammingVariation(sigma=0.1, mode="relative"),
    faults=StuckAtFaults(sa0=0.02, sa1=0.02),
    drift=Drift(nu_mean=0.1, nu_std=0.03, t0=1.0),
    read_noise=ReadNoise(sigma=0.02),
)


def _data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 2, 8, 8, generator=g)
    return [
        (x[:32], torch.randint(0, 4, (32,), generator=g)),
        (x[32:], torch.randint(0, 4, (32,), generator=g)),
    ]


def test_evaluate_same_seed_same_numbers_and_trials_differ():
    # a linear net labelled by its own digital predictions: accuracy = agreement with the
    # digital model, which the noisy chips lower by different amounts per trial
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(128, 4)).eval()
    x = torch.randn(256, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = net(x).argmax(1)
    data = [(x[k : k + 64], y[k : k + 64]) for k in range(0, 256, 64)]
    lay = map_model(net, CrossbarSpec(8, 8))
    ni = NonIdealityModel.from_config(NOISY)
    r1 = evaluate(net, data, lay, DeviceSpec(), ni, trials=4, seed=7, times=(1.0, 1e6))
    r2 = evaluate(net, data, lay, DeviceSpec(), ni, trials=4, seed=7, times=(1.0, 1e6))
    assert [r.per_trial for r in r1] == [r.per_trial for r in r2]
    assert len(r1[0].per_trial) == 4
    # each number is the accuracy of the chip programmed with the generator of (seed, trial),
    # the same chip at every time (paired): recompute it by hand
    am = convert(net, lay, DeviceSpec(), ni)

    def by_hand(seed: int, trial: int, t: float) -> float:
        am.program(trial_generator(seed, trial), time_s=t)
        return sum(int((am(xb).argmax(1) == yb).sum()) for xb, yb in data) / 256

    for j, t in enumerate((1.0, 1e6)):
        assert r1[j].per_trial == [by_hand(7, i, t) for i in range(4)]
        assert len(set(r1[j].per_trial)) > 1  # trials are different chips
        assert all(0.3 < a < 1.0 for a in r1[j].per_trial)  # noisy, far above chance (0.25)
        m = sum(r1[j].per_trial) / 4
        assert r1[j].mean == pytest.approx(m)
        assert r1[j].std == pytest.approx(
            (sum((a - m) ** 2 for a in r1[j].per_trial) / 3) ** 0.5  # sample std (n - 1)
        )
    r3 = evaluate(net, data, lay, DeviceSpec(), ni, trials=4, seed=8, times=(1.0,))
    assert r3[0].per_trial == [by_hand(8, i, 1.0) for i in range(4)]
    assert r3[0].per_trial != r1[0].per_trial  # another seed, other chips


def test_read_noise_differs_between_forward_calls():
    net = _net()
    cfg = NonIdealityModel.from_config(NonIdealityConfig(read_noise=ReadNoise(sigma=0.05)))
    am = convert(net, map_model(net, CrossbarSpec(8, 8)), DeviceSpec(), cfg)
    am.program(trial_generator(0, 0))
    assert not torch.allclose(am(X), am(X))


def test_drift_compensation_restores_uniform_drift():
    net = _net()
    lay = map_model(net, CrossbarSpec(8, 8))
    base = dict(drift=Drift(nu_mean=0.1, nu_std=0.0, t0=1.0))
    plain = NonIdealityModel.from_config(NonIdealityConfig(**base))
    comp = NonIdealityModel.from_config(NonIdealityConfig(**base, drift_compensation=True))
    t = 1e6
    a = convert(net, lay, DeviceSpec(g_min=0.0), plain)
    a.program(trial_generator(0, 0), time_s=t)
    b = convert(net, lay, DeviceSpec(g_min=0.0), comp)
    b.program(trial_generator(0, 0), time_s=t)
    # with g_min = 0 and one nu for all cells, drift is a pure scale (t/t0)^-nu of each layer
    # (biases are digital, so outputs are not just scaled) and compensation undoes it
    torch.testing.assert_close(b(X), net(X), rtol=1e-4, atol=1e-4)
    assert (a(X) - net(X)).abs().max() > 1e-2


def test_cuda_if_available():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    net = _net().cuda()
    lay = map_model(net, CrossbarSpec(8, 8))
    ni = NonIdealityModel.from_config(NOISY)
    am = convert(net, lay, DeviceSpec(), ni).cuda()
    am.program(trial_generator(0, 0, "cuda"))
    assert am(X.cuda()).is_cuda


@pytest.mark.parametrize("adc", [None, 24])
def test_packed_conv_layers_keep_ideal_outputs(adc):
    net = _net()
    xbar = CrossbarSpec(16, 8)  # 4 logical columns per tile
    with torch.no_grad():
        w = net[2].weight  # conv 5 -> 7, matrix 45 x 7: three row bands
        w[1, :2] = 0  # column 1 dead in the first band only -> bands keep different columns
        w[4] = 0  # column 4 dead everywhere
        w[6, 3:] = 0
    lay = map_model(net, xbar)
    packed = pack_layout(lay, net, "tile_column")
    assert len(packed["2"].blocks) > 1
    assert packed.tiles_needed(net) <= lay.tiles_needed(net)
    cfg = NonIdealityModel.from_config(NonIdealityConfig(adc_bits=adc)) if adc else IDEAL
    am = convert(net, packed, DeviceSpec(), cfg)
    am.program(trial_generator(0, 0))
    torch.testing.assert_close(am(X), net(X), rtol=1e-4, atol=1e-4)


def test_column_gains_by_hand():
    from xbarprune.hardware.nonideal.compensation import column_gains

    w = torch.tensor([[1.0, 2.0, 1.0], [3.0, 4.0, 0.0]])
    m = torch.tensor([[0.5, 1.0, 0.0], [1.5, 3.0, 0.0]])
    # col 0: exact half -> 2; col 1: <(2,4),(1,3)> / <(1,3),(1,3)> = 14 / 10; col 2 unread -> 1
    assert column_gains(w, m).tolist() == pytest.approx([2.0, 1.4, 1.0])


@pytest.mark.parametrize("adc", [None, 24])
@pytest.mark.parametrize("drift_comp", [False, True])
def test_column_calibration_undoes_uniform_drift(adc, drift_comp):
    net = _net()
    lay = map_model(net, CrossbarSpec(8, 8))
    cfg = NonIdealityConfig(
        drift=Drift(nu_mean=0.1, nu_std=0.0, t0=1.0),
        adc_bits=adc,
        drift_compensation=drift_comp,
        column_calibration=True,
    )
    am = convert(net, lay, DeviceSpec(g_min=0.0), NonIdealityModel.from_config(cfg))
    am.program(trial_generator(0, 0), time_s=1e6)
    # a common scale of every column is one least-squares gain per column: exactly undone,
    # and not twice when global drift compensation is on as well
    torch.testing.assert_close(am(X), net(X), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("adc", [None, 24])
def test_column_calibration_recovers_most_of_the_ir_drop_error(adc):
    from xbarprune.hardware.nonideal.model import IRDrop

    net = _net()
    lay = map_model(net, CrossbarSpec(8, 8))
    ir = IRDrop(r_row=5.0, r_col=10.0, r_source=1000.0, r_sink=1000.0, method="nodal")
    dev = DeviceSpec(g_min=2e-6, g_max=2e-5)
    errs = {}
    for cal in (False, True):
        cfg = NonIdealityConfig(ir_drop=ir, adc_bits=adc, column_calibration=cal)
        am = convert(net, lay, dev, NonIdealityModel.from_config(cfg))
        am.program(trial_generator(0, 0))
        with torch.no_grad():
            first = am.model[0](X)  # the first layer alone: its error is the calibration's
            want = net[0](X)
        errs[cal] = float((first - want).norm() / want.norm())
    assert errs[False] > 0.02
    assert errs[True] < 0.5 * errs[False]


@pytest.mark.parametrize("adc", [None, 24])
def test_row_calibration_undoes_driver_attenuation_exactly(adc):
    """With only a driver resistance (no wire segments, sense at 0 V) every tile row is
    attenuated by its own factor 1 / (1 + r_source * sum_j G_ij): one input gain per tile row
    undoes it exactly, a column gain cannot."""
    from xbarprune.hardware.nonideal.model import IRDrop

    net = _net()
    lay = map_model(net, CrossbarSpec(8, 8))
    ir = IRDrop(r_source=5000.0)
    dev = DeviceSpec(g_min=2e-6, g_max=2e-5)
    errs = {}
    for rows in (False, True):
        cfg = NonIdealityConfig(ir_drop=ir, adc_bits=adc, column_calibration=True,
                                row_calibration=rows)  # fmt: skip
        am = convert(net, lay, dev, NonIdealityModel.from_config(cfg))
        am.program(trial_generator(0, 0))
        with torch.no_grad():
            first, want = am.model[0](X), net[0](X)
        errs[rows] = float((first - want).norm() / want.norm())
    assert errs[False] > 0.01
    assert errs[True] < 1e-4


def test_row_gains_never_worse_than_column_gains_and_need_them():
    from xbarprune.errors import SpecError
    from xbarprune.hardware.nonideal.compensation import column_gains, row_column_gains

    g = torch.Generator().manual_seed(4)
    w = torch.randn(12, 6, generator=g)
    m = w * (1 + 0.2 * torch.randn(12, 6, generator=g))  # cell-wise errors: no exact fit
    keys = torch.arange(12).view(12, 1).expand(12, 6).clone() // 4  # 3 gain groups of 4 rows
    keys[0, 0] = -1  # an unplaced weight keeps gain 1
    r, c = row_column_gains(w, m, keys)
    col = column_gains(w, m)
    err_rc = float(((r * m * c - w) ** 2).sum())
    assert err_rc <= float(((m * col - w) ** 2).sum()) + 1e-9
    assert r[0, 0] == 1.0 and bool((r[1:4] == r[1, 0]).all())  # one gain per key
    with pytest.raises(SpecError, match="row_calibration needs column_calibration"):
        NonIdealityConfig(row_calibration=True)
