"""Cost model: ISAAC anchor, hand-computed energy/latency, pruning semantics, MVM counts."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from xbarprune.cost import (
    COMPONENTS,
    CostReport,
    TechnologyTable,
    count_mvms,
    energy_with_peripheral_share,
    estimate_cost,
    estimate_model_cost,
)
from xbarprune.errors import MappingError, SpecError
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.mapping import compact, layer_matrices, map_model, pack_columns

ISAAC = CrossbarSpec(128, 128)  # 1 cell per weight, differential: 64 weights per row


def _linear_layout(n_in: int, n_out: int, xbar: CrossbarSpec = ISAAC):
    model = nn.Linear(n_in, n_out, bias=False)
    return model, map_model(model, xbar)


# ------------------------------------------------------------------ sanity anchor: ISAAC IMA
def test_isaac_tile_area_and_power_anchor():
    """ISAAC-CE IMA (Table I, ISCA 2016): 8 crossbars 128x128 + 8 ADCs + DACs/S+H/S+A/IR/OR
    = 0.0131 mm2 and 24.1 mW at a 100 ns cycle, i.e. per crossbar 0.00164 mm2, 3.01 mW.

    Tolerance 1.5x: the default table is built from the same per-component figures, so a
    fully used 128x128 tile must land close; allowed differences are the modelling choices
    (4F^2 cell array instead of ISAAC's array figure, registers shared per tile, sequential
    vs pipelined read/ADC). A units slip (pJ/nJ, mm2/um2, ns/us) is off by >= 10^3.
    """
    _, lay = _linear_layout(128, 64)  # exactly one full tile: 128 rows, 128 physical cols
    r = estimate_cost(lay, {"": 1}, input_bits=1)
    assert r.dense.tiles_needed == 1
    isaac_area = 0.0131 / 8
    isaac_energy_per_cycle_nj = 24.08e-3 / 8 * 100e-9 * 1e9  # 3.01 mW x 100 ns
    assert isaac_area / 1.5 < r.dense.area_mm2 < isaac_area * 1.5
    assert isaac_energy_per_cycle_nj / 1.5 < r.dense.energy_nj < isaac_energy_per_cycle_nj * 1.5
    # ADC dominates both, as in ISAAC (ADC: 58 % of IMA area, 66 % of IMA power)
    assert r.dense.area_breakdown_mm2["adc"] > 0.5 * r.dense.area_mm2
    assert r.dense.energy_breakdown_nj["adc"] > 0.5 * r.dense.energy_nj
    # power with ISAAC's pipelined read/ADC over a 16-bit input: ~3 mW per crossbar
    tech = dataclasses.replace(TechnologyTable.default(), pipelined_read_adc=True)
    r16 = estimate_cost(lay, {"": 1}, input_bits=16, tech=tech)
    power_mw = r16.dense.energy_nj * 1e-9 / (r16.dense.latency_ns * 1e-9) * 1e3
    assert 3.01 / 1.5 < power_mw < 3.01 * 1.5


# ------------------------------------------------------------------ hand-computed 1-tile layer
def test_hand_computed_energy_latency_area_one_tile():
    xbar = CrossbarSpec(8, 8)  # differential, 1 cell/weight: 4 logical columns per tile
    model, lay = _linear_layout(6, 3, xbar)  # matrix 6 x 3 -> one tile
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.weight[1, :] = 0.0  # output column 1 pruned
        model.weight[:, 2] = 0.0  # input row 2 pruned
    mats = layer_matrices(model, lay)
    r = estimate_cost(lay, {"": 10}, matrices=mats, input_bits=4, adc_bits=6)
    c = r.compressed
    B, rows_driven, conv, cols, mvms = 4, 5, 2 * 2, 8, 10
    e_adc6 = 1.5625 * 2.0 ** (6 - 8)
    expected_pj = {
        "crossbar": B * rows_driven * cols * 1.8310546875e-3,
        "dac": B * rows_driven * 0.390625,
        "sample_hold": B * conv * 9.765625e-4,
        "adc": B * conv * e_adc6,
        "shift_add": B * conv * 0.01953125,
        "registers": B * (rows_driven * 0.12109375 + conv * 0.0224609375),
    }
    for comp, pj in expected_pj.items():
        assert c.energy_breakdown_nj[comp] == pytest.approx(pj * mvms * 1e-3, rel=1e-12)
    # latency: 1 ADC (128 columns per ADC) converts 4 columns per bit, 6-bit conversion time
    t_adc6 = 0.78125 * 6 / 8
    assert c.latency_ns == pytest.approx(mvms * B * (100.0 + conv * t_adc6))
    # area: whole tile with all peripherals
    cell = 4 * (32e-6) ** 2
    area = 64 * cell + 8 * 1.66015625e-7 + 8 * 3.90625e-8 + 0.0012 * 2.0**-2 + 3e-5 + 3.5875e-4
    assert c.area_mm2 == pytest.approx(area, rel=1e-12)
    assert (c.tiles, c.tiles_needed, c.adcs, c.dacs, c.cells) == (1, 1, 1, 8, 64)
    assert c.cells_used == 5 * 2 * 2  # 10 non-zero weights x differential pair
    # dense: 6 rows, 3 logical (6 physical) columns
    d = r.dense
    assert d.energy_breakdown_nj["adc"] == pytest.approx(B * 6 * e_adc6 * mvms * 1e-3)
    assert d.energy_breakdown_nj["dac"] == pytest.approx(B * 6 * 0.390625 * mvms * 1e-3)
    assert d.latency_ns == pytest.approx(mvms * B * (100.0 + 6 * t_adc6))
    assert d.area_mm2 == pytest.approx(c.area_mm2)


def test_device_energy_model_hand_computed():
    xbar = CrossbarSpec(8, 8)
    _, lay = _linear_layout(8, 4, xbar)  # one full tile
    dev = DeviceSpec(g_min=1e-6, g_max=1e-5, read_voltage=0.5)
    tech = dataclasses.replace(TechnologyTable.default(), crossbar_energy_model="device")
    r = estimate_cost(lay, {"": 1}, device=dev, tech=tech, input_bits=2)
    # E_cell = V^2 * G_avg * t_pulse * activity = 0.25 * 5.5e-6 S * 10 ns * 0.5 (J)
    e_cell_j = 0.25 * 5.5e-6 * 10e-9 * 0.5
    expected_nj = 2 * 8 * 8 * e_cell_j * 1e9
    assert r.dense.energy_breakdown_nj["crossbar"] == pytest.approx(expected_nj, rel=1e-12)


def test_offset_encoding_converts_reference_column():
    xbar = CrossbarSpec(8, 8, encoding="offset")  # 7 logical columns + 1 reference column
    _, lay = _linear_layout(8, 7, xbar)
    r = estimate_cost(lay, {"": 1}, input_bits=1)
    assert r.dense.energy_breakdown_nj["sample_hold"] == pytest.approx(8 * 9.765625e-4 * 1e-3)
    assert r.dense.cells_used == 8 * 7 + 8


def test_bit_slicing_multiplies_converted_columns():
    xbar = CrossbarSpec(16, 16, cells_per_weight=2)  # 2 slices x 2 (pair) = 4 cols per weight
    _, lay = _linear_layout(16, 3, xbar)
    r = estimate_cost(lay, {"": 1}, input_bits=1)
    assert r.dense.energy_breakdown_nj["adc"] == pytest.approx(3 * 4 * 1.5625e-3)


# ------------------------------------------------------------------ scaling and pruning
def test_area_energy_scale_linearly_with_needed_tiles():
    _, one = _linear_layout(128, 64)
    _, six = _linear_layout(3 * 128, 2 * 64)  # 3 x 2 full tiles
    r1 = estimate_cost(one, {"": 5})
    r6 = estimate_cost(six, {"": 5})
    assert r6.dense.tiles_needed == 6
    assert r6.dense.area_mm2 == pytest.approx(6 * r1.dense.area_mm2)
    assert r6.dense.energy_nj == pytest.approx(6 * r1.dense.energy_nj)
    for comp in COMPONENTS:
        assert r6.dense.energy_breakdown_nj[comp] == pytest.approx(
            6 * r1.dense.energy_breakdown_nj[comp]
        )
    assert r6.dense.latency_ns == pytest.approx(r1.dense.latency_ns)  # tiles in parallel
    assert (r6.dense.adcs, r6.dense.dacs) == (6, 6 * 128)


def test_freed_tiles_cost_nothing():
    model, lay = _linear_layout(3 * 128, 2 * 64)
    r_dense = estimate_cost(lay, {"": 1}, matrices=layer_matrices(model, lay))
    with torch.no_grad():
        model.weight[:64, :128] = 0.0  # tile (row band 0, column band 0)
        model.weight[64:, 256:] = 0.0  # tile (row band 2, column band 1)
    r = estimate_cost(lay, {"": 1}, matrices=layer_matrices(model, lay))
    assert r.compressed.tiles == 6 and r.compressed.tiles_needed == 4
    assert r.crossbar_saving == pytest.approx(2 / 6)
    assert r.compressed.area_mm2 == pytest.approx(4 / 6 * r_dense.compressed.area_mm2)
    assert r.compressed.energy_nj == pytest.approx(4 / 6 * r_dense.compressed.energy_nj)
    # a fully pruned layer costs nothing at all
    with torch.no_grad():
        model.weight.zero_()
    r0 = estimate_cost(lay, {"": 7}, matrices=layer_matrices(model, lay))
    c = r0.compressed
    assert (c.tiles_needed, c.cells, c.adcs, c.dacs, c.cells_used) == (0, 0, 0, 0, 0)
    assert c.area_mm2 == 0.0 and c.energy_nj == 0.0 and c.latency_ns == 0.0
    assert r0.dense.energy_nj > 0


def _small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 40, 3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(40 * 3 * 3, 10),
    )


def test_count_mvms_matches_output_positions():
    net = _small_net()
    # 16x16 -> conv1 (pad 1): 16x16 = 256; pool -> 8x8; conv2 (k3, no pad): 6x6 = 36;
    # conv3 (k3, s2, pad1): floor((6 + 2 - 3) / 2) + 1 = 3 -> 9; linear: 1
    assert count_mvms(net, (3, 16, 16)) == {"0": 256, "3": 36, "5": 9, "7": 1}
    assert net.training  # mode restored
    assert count_mvms(net, (3, 16, 16), layers=["5"]) == {"5": 9}
    seq = nn.Sequential(nn.Linear(4, 5))  # a sequence of 7 vectors per sample
    assert count_mvms(seq, (7, 4)) == {"0": 7}
    with pytest.raises(SpecError, match="nope"):
        count_mvms(net, (3, 16, 16), layers=["nope"])
    with pytest.raises(SpecError, match="batch"):
        count_mvms(net, ())


def test_pruned_model_costs_no_more_than_dense():
    torch.manual_seed(0)
    net = _small_net()
    xbar = CrossbarSpec(32, 32)
    lay = map_model(net, xbar)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_((torch.rand_like(m.weight) > 0.8).float())
                m.weight[: m.weight.shape[0] // 2] = 0.0  # half the filters
    mvms = count_mvms(net, (3, 16, 16))
    mats = layer_matrices(net, lay)
    for layout in (lay, _packed(lay, mats)):
        r = estimate_cost(layout, mvms, matrices=mats)
        for lc in r.layers:
            d, c = lc.dense, lc.compressed
            assert c.tiles_needed <= d.tiles_needed
            assert c.area_mm2 <= d.area_mm2 + 1e-15
            assert c.energy_nj <= d.energy_nj + 1e-12
            assert c.latency_ns <= d.latency_ns + 1e-9
            assert c.cells_used <= d.cells_used
        assert r.compressed.energy_nj < r.dense.energy_nj
        assert 0 < r.crossbar_saving < 1 and r.energy_saving > 0


def _packed(lay, mats):
    out = lay
    for layer in lay:
        out = out.replace(pack_columns(compact(layer, mats[layer.name]), mats[layer.name]))
    return out


def test_packing_frees_more_tiles_than_masking_alone():
    torch.manual_seed(1)
    model, lay = _linear_layout(256, 256)  # 2 x 4 = 8 tiles
    with torch.no_grad():
        model.weight[1::2] = 0.0  # every other output: no tile is empty, half its columns are
    mats = layer_matrices(model, lay)
    masked = estimate_cost(lay, {"": 1}, matrices=mats)
    assert masked.compressed.tiles_needed == 8
    packed = estimate_cost(lay.replace(pack_columns(lay[""], mats[""])), {"": 1}, matrices=mats)
    assert packed.compressed.tiles_needed == 4
    assert packed.compressed.area_mm2 < masked.compressed.area_mm2
    # masked tiles convert only the used columns: ADC energy halves, DAC energy does not
    d = masked.dense.energy_breakdown_nj
    m = masked.compressed.energy_breakdown_nj
    assert m["adc"] == pytest.approx(d["adc"] / 2)
    assert m["dac"] == pytest.approx(d["dac"])


def test_adc_mux_latency_uses_busiest_adc():
    xbar = CrossbarSpec(8, 8)  # 8 physical columns
    tech = dataclasses.replace(TechnologyTable.default(), columns_per_adc=4)  # 2 ADCs per tile
    model, lay = _linear_layout(8, 4, xbar)
    with torch.no_grad():
        model.weight[2:] = 0.0  # logical columns 0, 1 -> physical 0..3 -> all on ADC 0
    r = estimate_cost(lay, {"": 1}, matrices=layer_matrices(model, lay), tech=tech, input_bits=1)
    t = 0.78125
    assert r.dense.latency_ns == pytest.approx(100 + 4 * t)  # 8 columns over 2 ADCs
    assert r.compressed.latency_ns == pytest.approx(100 + 4 * t)  # ADC 0 still has 4
    assert r.compressed.adcs == 2
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.weight[1:3] = 0.0  # columns 0 and 3 -> one on each ADC
    r = estimate_cost(lay, {"": 1}, matrices=layer_matrices(model, lay), tech=tech, input_bits=1)
    assert r.compressed.latency_ns == pytest.approx(100 + 2 * t)


def test_layers_run_sequentially():
    net = nn.Sequential(nn.Linear(128, 64, bias=False), nn.Linear(64, 64, bias=False))
    lay = map_model(net, ISAAC)
    r = estimate_cost(lay, {"0": 1, "1": 3})
    assert r.dense.latency_ns == pytest.approx(sum(lc.dense.latency_ns for lc in r.layers))
    assert r.layer("1").dense.latency_ns == pytest.approx(3 * r.layer("0").dense.latency_ns)


# ------------------------------------------------------------------ peripheral share
@pytest.mark.parametrize("share", [0.25, 0.37, 0.5])
def test_energy_with_peripheral_share(share):
    torch.manual_seed(2)
    net = _small_net()
    lay = map_model(net, CrossbarSpec(32, 32))
    with torch.no_grad():
        net[0].weight[:8] = 0.0
    r = estimate_model_cost(net, lay, (3, 16, 16))
    s = energy_with_peripheral_share(r, share)
    assert s.dense.peripheral_share == pytest.approx(share)
    assert s.peripheral_share == pytest.approx(share)
    assert s.peripheral_share_target == share
    # array energy, area and latency untouched; every peripheral component scaled alike
    k = s.peripheral_scale
    for a, b in ((r.dense, s.dense), (r.compressed, s.compressed)):
        assert b.energy_breakdown_nj["crossbar"] == pytest.approx(a.energy_breakdown_nj["crossbar"])
        assert b.peripheral_energy_nj == pytest.approx(k * a.peripheral_energy_nj)
        assert b.area_mm2 == a.area_mm2 and b.latency_ns == a.latency_ns
    assert sum(lc.dense.energy_nj for lc in s.layers) == pytest.approx(s.dense.energy_nj)
    assert s.compressed.energy_nj < s.dense.energy_nj


def test_peripheral_share_out_of_range():
    _, lay = _linear_layout(128, 64)
    r = estimate_cost(lay, {"": 1})
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(SpecError, match="share"):
            energy_with_peripheral_share(r, bad)
    with pytest.raises(SpecError, match="non-zero"):
        energy_with_peripheral_share(estimate_cost(lay, {"": 0}), 0.3)


# ------------------------------------------------------------------ report and errors
def test_report_to_dict_is_json():
    net = _small_net()
    lay = map_model(net, CrossbarSpec(64, 64))
    r = estimate_model_cost(net, lay, (3, 16, 16), input_bits=4, adc_bits=5)
    assert isinstance(r, CostReport)
    d = json.loads(json.dumps(r.to_dict()))
    assert [x["name"] for x in d["layers"]] == ["0", "3", "5", "7"]
    assert d["total"]["dense"]["tiles"] == lay.dense_tiles
    assert d["settings"]["adc_bits"] == 5 and d["tech"]["name"] == "isaac32"
    assert d["total"]["dense"]["energy_nj"] == pytest.approx(
        sum(x["dense"]["energy_nj"] for x in d["layers"])
    )
    assert math.isclose(d["total"]["crossbar_saving"], 0.0, abs_tol=1e-12)


def test_bad_arguments():
    model, lay = _linear_layout(16, 4)
    with pytest.raises(MappingError, match="MVM count"):
        estimate_cost(lay, {})
    with pytest.raises(SpecError, match="mvms"):
        estimate_cost(lay, {"": -1})
    with pytest.raises(MappingError, match="no matrix"):
        estimate_cost(lay, {"": 1}, matrices={})
    with pytest.raises(MappingError, match="shape"):
        estimate_cost(lay, {"": 1}, matrices={"": torch.zeros(4, 16)})
    for name in ("input_bits", "adc_bits"):
        with pytest.raises(SpecError, match=name):
            estimate_cost(lay, {"": 1}, **{name: 0})
