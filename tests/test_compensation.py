"""Drift compensation and gain calibration as classes (hardware/nonideal/compensation.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import yaml
from torch import Tensor, nn

from xbarprune.analog import convert, trial_generator
from xbarprune.config import from_dict, to_dict
from xbarprune.errors import ConfigError, SpecError
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal import (
    Drift,
    IRDrop,
    NonIdealityConfig,
    NonIdealityModel,
    PCMStatistical,
    ProgrammingVariation,
)
from xbarprune.hardware.nonideal.compensation import (
    ColumnGainCalibration,
    GainCorrection,
    Gains,
    GlobalDriftCompensation,
    RowColumnCalibration,
    column_gains,
    row_column_gains,
)
from xbarprune.mapping import map_model

W = torch.tensor([[1.0, 2.0, 1.0], [3.0, 4.0, 0.0]])
M = torch.tensor([[0.5, 1.0, 0.0], [1.5, 3.0, 0.0]])


def test_global_drift_compensation_by_hand():
    # sum|W| = 11, sum|M| = 6: gain 11/6 (aihwkit: sum|W_0| / sum|W_t| of the one-hot reads)
    g = GlobalDriftCompensation().fit(W, -M)
    assert g.scalar == pytest.approx(11 / 6) and g.col is None and g.row is None
    assert GlobalDriftCompensation().fit(W, torch.zeros_like(W)).scalar == 1.0  # nothing read
    torch.testing.assert_close(g.apply(M), M * (11 / 6))


def test_column_gain_calibration_by_hand():
    # col 0: exact half -> 2; col 1: <(2,4),(1,3)> / <(1,3),(1,3)> = 14/10; col 2 unread -> 1
    g = ColumnGainCalibration().fit(W, M)
    assert g.scalar == 1.0 and g.row is None
    assert g.col.tolist() == pytest.approx([2.0, 1.4, 1.0])
    torch.testing.assert_close(g.apply(M), M * torch.tensor([2.0, 1.4, 1.0]))


def test_row_column_calibration_by_hand_and_as_the_function():
    # one tile row per matrix row, weights attenuated row-wise: a column-only fit cannot undo
    # it, the joint fit does (r * M * c == W on the placed weights up to the common scale)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = torch.tensor([[0.5, 1.0], [3.0, 4.0]])  # row 0 halved
    keys = torch.tensor([[0, 0], [1, 1]])
    g = RowColumnCalibration(iters=50).fit(w, m, keys)
    torch.testing.assert_close(g.apply(m), w, rtol=1e-4, atol=1e-4)
    col_only = ColumnGainCalibration().fit(w, m).apply(m)
    assert float((col_only - w).abs().max()) > 0.1
    r, c = row_column_gains(w, m, keys)  # the default iters
    g6 = RowColumnCalibration().fit(w, m, keys)
    assert torch.equal(g6.row, r) and torch.equal(g6.col, c)
    with pytest.raises(SpecError, match="row_keys"):
        RowColumnCalibration().fit(w, m)
    with pytest.raises(SpecError, match="RowColumnCalibration.iters"):
        RowColumnCalibration(iters=0)


def test_gains_apply_order_matches_the_old_formula():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 4, generator=g)
    col, row = torch.rand(4, generator=g), torch.rand(5, 4, generator=g)
    assert torch.equal(Gains(1.7, col, row).apply(w), w * 1.7 * col * row)
    assert torch.equal(Gains().apply(w), w * 1.0)
    assert torch.equal(column_gains(W, M), ColumnGainCalibration().fit(W, M).col)


def test_yaml_booleans_map_to_the_classes():
    text = "drift_compensation: true\ncolumn_calibration: true\nrow_calibration: true\n"
    cfg = from_dict(NonIdealityConfig, yaml.safe_load(text), "nonideal")
    assert cfg.drift_compensator == GlobalDriftCompensation()
    assert cfg.calibrator == RowColumnCalibration()
    assert to_dict(cfg)["drift_compensation"] is True  # the recorded config is unchanged
    col = NonIdealityConfig(column_calibration=True)
    assert col.calibrator == ColumnGainCalibration() and col.drift_compensator is None
    assert NonIdealityConfig().calibrator is None
    m = NonIdealityModel.from_config(
        NonIdealityConfig(drift_compensation=GlobalDriftCompensation())
    )
    assert m.drift_compensation is True
    with pytest.raises(ConfigError, match="drift_compensation"):
        from_dict(NonIdealityConfig, {"drift_compensation": "yes"}, "nonideal")
    with pytest.raises(SpecError, match="row_calibration"):
        NonIdealityConfig(column_calibration=ColumnGainCalibration(), row_calibration=True)
    with pytest.raises(SpecError, match="column_calibration"):
        NonIdealityConfig(column_calibration=1.0)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 5)).eval()


X = torch.randn(4, 12, generator=torch.Generator().manual_seed(1))


def _run(cfg: NonIdealityConfig, time_s: float = 1e4):
    net = _net()
    am = convert(net, map_model(net, CrossbarSpec(8, 8)), DeviceSpec(g_min=2e-6, g_max=2e-5),
                 NonIdealityModel.from_config(cfg))  # fmt: skip
    am.program(trial_generator(0, 0), time_s)
    return am


@pytest.mark.parametrize(
    "base",
    [
        {"drift": Drift(nu_mean=0.1, nu_std=0.02), "pcm": PCMStatistical()},
        {"ir_drop": IRDrop(r_source=2000.0), "variation": ProgrammingVariation(0.05)},
    ],
)
def test_objects_in_the_config_equal_the_yaml_booleans(base):
    flags = NonIdealityConfig(**base, drift_compensation=True, column_calibration=True)
    objs = NonIdealityConfig(
        **base,
        drift_compensation=GlobalDriftCompensation(),
        column_calibration=ColumnGainCalibration(),
    )
    assert torch.equal(_run(flags)(X), _run(objs)(X))
    assert not torch.equal(_run(flags)(X), _run(NonIdealityConfig(**base))(X))


@dataclass(frozen=True)
class _Double(GainCorrection):
    """A new scheme is a new class: doubles every column (to see that program calls it)."""

    def fit(self, reference: Tensor, measured: Tensor, row_keys: Tensor | None = None) -> Gains:
        return Gains(col=torch.full((measured.shape[1],), 2.0))


def test_program_calls_a_new_scheme_through_the_interface():
    base = {"variation": ProgrammingVariation(0.05)}
    plain = _run(NonIdealityConfig(**base))
    double = _run(NonIdealityConfig(**base, column_calibration=_Double()))
    for a, b in zip(plain.analog_layers(), double.analog_layers(), strict=True):
        torch.testing.assert_close(b._w_eff, 2 * a._w_eff)
