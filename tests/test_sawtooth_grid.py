"""The sawtooth's grid is the simulator's weight-level grid (issue #21, PRUNIX item 8).

For each crossbar encoding / cells per weight / quantiser, the set of levels the regulariser
pulls towards (the values of its Q(w) over a dense sweep) must equal the set of weights the
simulator can program (encode -> Quantization on every cell -> decode over the same sweep),
and both must equal the hand-computed set.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

from xbarprune.compress.methods.prunix import PrunixParams, build_regularizer, sawtooth_grid
from xbarprune.compress.parts.sawtooth import GroupSawtooth, on_level_fraction, simulator_grid
from xbarprune.hardware.conductance import decode, encode
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel
from xbarprune.hardware.nonideal.quantization import Quantization
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec

SWEEP = torch.linspace(-1.0, 1.0, 20001, dtype=torch.float64)


def _set(t: torch.Tensor) -> list[float]:
    """Sorted distinct values, merged at 1e-6 (float32 decoding)."""
    out: list[float] = []
    for v in sorted(float(x) for x in t.flatten()):
        if not out or v - out[-1] > 1e-6:
            out.append(v)
    return out


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-5 for x, y in zip(a, b, strict=True))


def _simulated(xbar: CrossbarSpec, dev: DeviceSpec, q_levels: int | None) -> list[float]:
    """Weights the simulator programs for the sweep (w_max = 1), quantisation on."""
    w = SWEEP.float().view(1, -1)
    cells = encode(w, 1.0, xbar, dev)
    q = Quantization(levels=q_levels)
    cells = q.apply(cells, SimpleNamespace(device=dev))
    return _set(decode(cells, 1.0, xbar, dev))


def _regularised(xbar: CrossbarSpec, dev: DeviceSpec, q_levels: int | None) -> list[float]:
    """The levels of the regulariser the PRUNIX method builds for this configuration."""
    ni = NonIdealityModel.from_config(NonIdealityConfig(quantization=Quantization(q_levels)))
    ctx = SimpleNamespace(layout=SimpleNamespace(crossbar=xbar), device_spec=dev, nonideal=ni)
    reg = build_regularizer(PrunixParams(regularizer="group_sawtooth"), ctx)
    assert isinstance(reg, GroupSawtooth)
    return _set(reg.quantize(SWEEP.view(1, -1)))


def _frac(vals) -> list[float]:
    return [float(Fraction(v)) for v in sorted(set(vals))]


# (encoding, k, device levels L, Quantization.levels, hand-computed level set / w_max)
CASES = [
    ("differential", 1, 8, None, _frac(Fraction(m, 7) for m in range(-7, 8))),
    ("differential", 1, 8, 8, _frac(Fraction(m, 7) for m in range(-7, 8))),
    ("differential", 2, 4, None, _frac(Fraction(m, 15) for m in range(-15, 16))),
    # a quantiser coarser than the device: the cell holds 8 levels, not 16
    ("differential", 1, 16, 8, _frac(Fraction(m, 7) for m in range(-7, 8))),
    # offset: w = w_max (2u - 1), u = i / (L**k - 1); zero is not a level for even L**k
    ("offset", 1, 8, None, _frac(Fraction(2 * i, 7) - 1 for i in range(8))),
    ("offset", 2, 4, None, _frac(Fraction(2 * q, 15) - 1 for q in range(16))),
    ("offset", 1, 5, None, _frac(Fraction(2 * i, 4) - 1 for i in range(5))),
]


@pytest.mark.parametrize(("encoding", "k", "L", "Q", "hand"), CASES)
def test_sawtooth_grid_is_the_simulator_grid(encoding, k, L, Q, hand):
    xbar = CrossbarSpec(rows=64, cols=64, cells_per_weight=k, encoding=encoding)
    dev = DeviceSpec(g_min=1e-6, g_max=1e-4, levels=L)
    sim = _simulated(xbar, dev, Q)
    assert _close(sim, hand), (sim, hand)
    assert _close(list(simulator_grid(k, L, encoding, Q)), hand)
    reg = _regularised(xbar, dev, Q)
    assert _close(reg, hand), (reg, hand)


def test_offset_zero_is_not_a_level_for_even_levels():
    xbar = CrossbarSpec(rows=64, cols=64, cells_per_weight=1, encoding="offset")
    dev = DeviceSpec(g_min=1e-6, g_max=1e-4, levels=8)
    ctx = SimpleNamespace(layout=SimpleNamespace(crossbar=xbar), device_spec=dev, nonideal=None)
    n, units = sawtooth_grid(ctx)
    assert units is not None and 0.0 not in units
    reg = GroupSawtooth(SimpleNamespace(), n_levels=n, units=units)
    w = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64)
    # a zero weight is programmed at +-1/7 w_max, so the sawtooth is 1/7 there, not 0
    assert float((w - reg.quantize(w)).abs()[0, 0]) == pytest.approx(1 / 7)


def test_matching_differential_keeps_the_uniform_grid():
    """The prunix study's configuration (differential, k = 1, 8 = 8 levels) is unchanged."""
    xbar = CrossbarSpec(rows=64, cols=64, cells_per_weight=1, encoding="differential")
    dev = DeviceSpec(g_min=1e-6, g_max=1e-4, levels=8)
    ni = NonIdealityModel.from_config(NonIdealityConfig(quantization=Quantization(levels=8)))
    ctx = SimpleNamespace(layout=SimpleNamespace(crossbar=xbar), device_spec=dev, nonideal=ni)
    assert sawtooth_grid(ctx) == (8, None)


def test_on_level_fraction_uses_the_given_grid():
    lin = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():  # offset levels of L = 8: (2i - 7) / 7
        lin.weight.copy_(torch.tensor([[1.0, 3 / 7, -5 / 7, 2 / 7]]))
    model = torch.nn.Sequential(lin)
    lay = [SimpleNamespace(name="0")]
    units = simulator_grid(1, 8, "offset")
    assert on_level_fraction(model, lay, 8, units=units) == pytest.approx(3 / 4)
    assert on_level_fraction(model, lay, 8) == pytest.approx(1.0)  # uniform grid: 2/7 is a level
