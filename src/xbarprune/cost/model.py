"""Crossbars, cells, ADCs, DACs, area, energy and latency of a crossbar layout (DESIGN.md `cost/`).

The hardware model is an ISAAC-style tile (Shafiee et al., ISCA 2016; PUMA, Ankit et al.,
ASPLOS 2019; DNN+NeuroSim, Peng et al., TCAD 2020): one ``rows x cols`` memristor array with a
1-bit DAC (driver) per row, a sample-and-hold per column, ``ceil(cols / columns_per_adc)``
multiplexed ADCs, shift-and-add units and input/output registers. Inputs are applied
bit-serially: one MVM takes ``input_bits`` read cycles and every converted column is
digitised ``input_bits`` times (1-bit DACs; multi-bit DACs are not modelled). Each physical
column (a bit slice, one side of a differential pair, the offset reference column) is
digitised on its own and combined digitally. Constants:
:class:`~xbarprune.cost.tech.TechnologyTable`.

Pruning semantics, per tile and per MVM:

* a tile whose weights are all zero is **freed**: no area, no energy, no latency;
* in a needed tile, a row with no non-zero weight is **not driven** (no DAC, input-register
  or array energy for it); a logical column with no non-zero weight is **not converted**
  (no S+H, ADC, shift-and-add or output-register energy for its physical columns, and no
  ADC time); the offset encoding's reference column is converted in every needed tile;
* area counts whole needed tiles with all their peripherals.

Energy of one tile per MVM (B = input_bits, r = driven rows, k = converted physical columns,
``cols`` = physical columns of the tile)::

    crossbar    = B · r · cols · e_cell
    dac         = B · r · e_dac
    registers   = B · (r · e_input_register + k · e_output_register)
    sample_hold = B · k · e_sh
    adc         = B · k · e_adc(adc_bits),   e_adc(b) = e_adc_ref · s_E ** (b − b_ref)
    shift_add   = B · k · e_shift_add

with ``e_cell = cell_read_energy_fj`` (``per_cell`` model, ISAAC's array power per cell) or
``e_cell = V_read² · (g_min + g_max)/2 · read_pulse_ns · input_bit_activity`` (``device``
model, from the :class:`~xbarprune.hardware.spec.DeviceSpec`; every cell of a driven row
conducts while its input bit is 1). A layer's energy per inference is its MVM count times the
sum over its tiles. Everything except ``crossbar`` is *peripheral*.

Latency: the tiles of a layer run in parallel and its MVMs one after another; layers run
sequentially (no inter-layer pipelining, no weight replication). Per MVM a needed tile takes,
with ``m`` = the most conversions any one of its ADCs must do (used columns on its mux)::

    sequential (default):   B · (t_read + m · t_adc(adc_bits))
    pipelined_read_adc:     B · max(t_read, m · t_adc) + min(t_read, m · t_adc)

and ``t_adc(b) = adc_conversion_ns · b / adc_ref_bits``. Layer latency = MVMs · max over its
needed tiles; total latency = sum over layers. Digital work outside the tile (partial-sum
accumulation across tiles, activation, pooling, buffers between layers, interconnect) is not
modelled: the model covers ISAAC's in-situ multiply-accumulate unit (IMA), not the chip.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xbarprune.cost.activity import count_mvms
from xbarprune.cost.tech import TechnologyTable, load_tech
from xbarprune.errors import MappingError, SpecError, check_range
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.mapping.layout import CrossbarLayout, LayerLayout, layer_matrices

COMPONENTS: tuple[str, ...] = (
    "crossbar",
    "dac",
    "sample_hold",
    "adc",
    "shift_add",
    "registers",
)
PERIPHERAL_COMPONENTS: tuple[str, ...] = COMPONENTS[1:]


@dataclass(frozen=True)
class Cost:
    """Cost of one layer (or a whole model) in one state (dense or compressed).

    Attributes:
        tiles: tiles of the layout (dense: the natural dense layout).
        tiles_needed: tiles holding at least one non-zero weight (the others are freed).
        cells: physical cells of the needed tiles (rows · cols each).
        cells_used: physical cells holding a non-zero weight (cells_per_weight per weight,
            two per slice for the differential pair) plus driven reference cells.
        adcs / dacs: converters in the needed tiles.
        area_mm2 / energy_nj / latency_ns: totals (energy and latency per inference).
        area_breakdown_mm2 / energy_breakdown_nj: per component (see :data:`COMPONENTS`).
    """

    tiles: int
    tiles_needed: int
    cells: int
    cells_used: int
    adcs: int
    dacs: int
    latency_ns: float
    area_breakdown_mm2: dict[str, float] = field(default_factory=dict)
    energy_breakdown_nj: dict[str, float] = field(default_factory=dict)

    @property
    def area_mm2(self) -> float:
        return float(sum(self.area_breakdown_mm2.values()))

    @property
    def energy_nj(self) -> float:
        return float(sum(self.energy_breakdown_nj.values()))

    @property
    def peripheral_energy_nj(self) -> float:
        return float(sum(self.energy_breakdown_nj.get(c, 0.0) for c in PERIPHERAL_COMPONENTS))

    @property
    def peripheral_share(self) -> float:
        """Fraction of the energy spent outside the memristor arrays (0 if no energy)."""
        e = self.energy_nj
        return self.peripheral_energy_nj / e if e > 0 else 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            tiles=self.tiles + other.tiles,
            tiles_needed=self.tiles_needed + other.tiles_needed,
            cells=self.cells + other.cells,
            cells_used=self.cells_used + other.cells_used,
            adcs=self.adcs + other.adcs,
            dacs=self.dacs + other.dacs,
            latency_ns=self.latency_ns + other.latency_ns,
            area_breakdown_mm2={
                c: self.area_breakdown_mm2.get(c, 0.0) + other.area_breakdown_mm2.get(c, 0.0)
                for c in COMPONENTS
            },
            energy_breakdown_nj={
                c: self.energy_breakdown_nj.get(c, 0.0) + other.energy_breakdown_nj.get(c, 0.0)
                for c in COMPONENTS
            },
        )

    @classmethod
    def zero(cls) -> Cost:
        return cls(
            0, 0, 0, 0, 0, 0, 0.0, dict.fromkeys(COMPONENTS, 0.0), dict.fromkeys(COMPONENTS, 0.0)
        )

    def with_peripheral_scale(self, scale: float) -> Cost:
        """Same cost with every peripheral energy component multiplied by ``scale``."""
        e = {
            c: v * scale if c in PERIPHERAL_COMPONENTS else v
            for c, v in self.energy_breakdown_nj.items()
        }
        return dataclasses.replace(self, energy_breakdown_nj=e)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tiles": self.tiles,
            "tiles_needed": self.tiles_needed,
            "cells": self.cells,
            "cells_used": self.cells_used,
            "adcs": self.adcs,
            "dacs": self.dacs,
            "area_mm2": self.area_mm2,
            "energy_nj": self.energy_nj,
            "latency_ns": self.latency_ns,
            "peripheral_share": self.peripheral_share,
            "area_breakdown_mm2": dict(self.area_breakdown_mm2),
            "energy_breakdown_nj": dict(self.energy_breakdown_nj),
        }


@dataclass(frozen=True)
class LayerCost:
    """One mapped layer: its MVMs per inference and its dense and compressed cost."""

    name: str
    kind: str
    mvms: int
    dense: Cost
    compressed: Cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "mvms": self.mvms,
            "dense": self.dense.to_dict(),
            "compressed": self.compressed.to_dict(),
        }


def _saving(dense: float, comp: float) -> float:
    return 1.0 - comp / dense if dense > 0 else 0.0


@dataclass(frozen=True)
class CostReport:
    """Per-layer and total cost, dense (natural layout, every weight non-zero) vs compressed
    (the given layout and weights).

    ``peripheral_scale`` is 1 for a plain estimate; :func:`energy_with_peripheral_share`
    returns a report whose peripheral energies are multiplied by it (and records the target
    share in ``peripheral_share_target``).
    """

    layers: tuple[LayerCost, ...]
    dense: Cost
    compressed: Cost
    crossbar: CrossbarSpec
    device: DeviceSpec
    tech: TechnologyTable
    input_bits: int
    adc_bits: int
    peripheral_scale: float = 1.0
    peripheral_share_target: float | None = None

    def layer(self, name: str) -> LayerCost:
        for lc in self.layers:
            if lc.name == name:
                return lc
        raise MappingError(
            f"no layer named '{name}' in the cost report; layers: "
            f"{', '.join(lc.name for lc in self.layers)}"
        )

    @property
    def crossbar_saving(self) -> float:
        """Crossbars freed / crossbars of the dense layout."""
        return _saving(self.dense.tiles_needed, self.compressed.tiles_needed)

    @property
    def area_saving(self) -> float:
        return _saving(self.dense.area_mm2, self.compressed.area_mm2)

    @property
    def energy_saving(self) -> float:
        return _saving(self.dense.energy_nj, self.compressed.energy_nj)

    @property
    def latency_saving(self) -> float:
        return _saving(self.dense.latency_ns, self.compressed.latency_ns)

    @property
    def peripheral_share(self) -> float:
        """Peripheral share of the dense energy per inference."""
        return self.dense.peripheral_share

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain structure (settings, technology table, layers, totals)."""
        return {
            "settings": {
                "crossbar": dataclasses.asdict(self.crossbar),
                "device": dataclasses.asdict(self.device),
                "input_bits": self.input_bits,
                "adc_bits": self.adc_bits,
                "peripheral_scale": self.peripheral_scale,
                "peripheral_share_target": self.peripheral_share_target,
            },
            "tech": self.tech.to_dict(),
            "layers": [lc.to_dict() for lc in self.layers],
            "total": {
                "dense": self.dense.to_dict(),
                "compressed": self.compressed.to_dict(),
                "crossbar_saving": self.crossbar_saving,
                "area_saving": self.area_saving,
                "energy_saving": self.energy_saving,
                "latency_saving": self.latency_saving,
            },
        }


# ---------------------------------------------------------------------------- tile statistics
@dataclass(frozen=True)
class _TileStats:
    rows_driven: Tensor  # (T,) int
    conversions: Tensor  # (T,) int, converted physical columns
    max_per_adc: Tensor  # (T,) int, conversions of the busiest ADC
    nonzero: Tensor  # (T,) int, non-zero weights
    active: Tensor  # (T,) bool


def _stats(
    x: CrossbarSpec, rows_driven: Tensor, slot_used: Tensor, nonzero: Tensor, tech: TechnologyTable
) -> _TileStats:
    T = slot_used.shape[0]
    active = slot_used.any(1) & (rows_driven > 0)
    rows_driven = torch.where(active, rows_driven, torch.zeros_like(rows_driven))
    slot_used = slot_used & active.view(-1, 1)
    phys = slot_used.repeat_interleave(x.columns_per_weight, dim=1)
    cpa = tech.columns_per_adc
    n_adc = math.ceil(x.cols / cpa)
    full = torch.zeros(T, n_adc * cpa, dtype=torch.bool)
    full[:, : phys.shape[1]] = phys
    if x.encoding == "offset":
        full[:, x.cols - 1] = active  # the reference column
    return _TileStats(
        rows_driven=rows_driven.long(),
        conversions=full.sum(1),
        max_per_adc=full.view(T, n_adc, cpa).sum(2).amax(1)
        if T
        else torch.zeros(0, dtype=torch.long),
        nonzero=torch.where(active, nonzero, torch.zeros_like(nonzero)).long(),
        active=active,
    )


def _dense_stats(layer: LayerLayout, tech: TechnologyTable) -> _TileStats:
    """Natural dense layout with every weight non-zero (computed without building tiles)."""
    x = layer.crossbar
    R, C = layer.matrix_shape
    wpr = x.weights_per_row
    nr, nc = x.tile_grid(R, C)
    rows_in = (R - torch.arange(nr) * x.rows).clamp(max=x.rows)
    slots_in = (C - torch.arange(nc) * wpr).clamp(max=wpr)
    rows_driven = rows_in.repeat_interleave(nc)  # tile t = i * nc + j
    slot_used = (torch.arange(wpr).view(1, -1) < slots_in.view(-1, 1)).repeat(nr, 1)
    return _stats(x, rows_driven, slot_used, rows_driven * slot_used.sum(1), tech)


def _layout_stats(layer: LayerLayout, mat: Tensor | None, tech: TechnologyTable) -> _TileStats:
    if mat is None:  # every placed weight non-zero
        rows_driven = (layer.tile_rows >= 0).sum(1)
        slot_used = layer.tile_cols >= 0
        return _stats(layer.crossbar, rows_driven, slot_used, rows_driven * slot_used.sum(1), tech)
    flat = torch.cat([mat.detach().cpu().reshape(-1), mat.new_zeros(1, device="cpu")])
    cells = layer.tile_cells
    nz = flat[torch.where(cells < 0, flat.numel() - 1, cells)] != 0  # (T, rows, wpr)
    return _stats(layer.crossbar, nz.any(2).sum(1), nz.any(1), nz.sum((1, 2)), tech)


# ---------------------------------------------------------------------------- cost laws
def _cell_energy_pj(tech: TechnologyTable, device: DeviceSpec) -> float:
    """Array energy per cell of a driven row per input bit (pJ)."""
    if tech.crossbar_energy_model == "per_cell":
        return tech.cell_read_energy_fj * 1e-3
    g_avg = 0.5 * (device.g_min + device.g_max)
    # V² [V²] · G [S] · t [ns] = 1e-9 J = 1e3 pJ
    return device.read_voltage**2 * g_avg * tech.read_pulse_ns * 1e3 * tech.input_bit_activity


def _tile_area(x: CrossbarSpec, tech: TechnologyTable, adc_bits: int) -> dict[str, float]:
    n_adc = math.ceil(x.cols / tech.columns_per_adc)
    return {
        "crossbar": x.rows * x.cols * tech.cell_area_mm2,
        "dac": x.rows * tech.dac_area_mm2,
        "sample_hold": x.cols * tech.sample_hold_area_mm2,
        "adc": n_adc * tech.adc_area_at(adc_bits),
        "shift_add": n_adc * tech.shift_add_area_mm2,
        "registers": tech.register_area_mm2,
    }


def _cost(
    st: _TileStats,
    n_tiles: int,
    mvms: int,
    x: CrossbarSpec,
    tech: TechnologyTable,
    device: DeviceSpec,
    input_bits: int,
    adc_bits: int,
) -> Cost:
    B = input_bits
    n_active = int(st.active.sum())
    r = float(st.rows_driven.sum())
    k = float(st.conversions.sum())
    per_mvm_pj = {
        "crossbar": B * r * x.cols * _cell_energy_pj(tech, device),
        "dac": B * r * tech.dac_energy_pj,
        "sample_hold": B * k * tech.sample_hold_energy_pj,
        "adc": B * k * tech.adc_energy_at(adc_bits),
        "shift_add": B * k * tech.shift_add_energy_pj,
        "registers": B * (r * tech.input_register_energy_pj + k * tech.output_register_energy_pj),
    }
    energy_nj = {c: v * mvms * 1e-3 for c, v in per_mvm_pj.items()}
    area = {c: v * n_active for c, v in _tile_area(x, tech, adc_bits).items()}
    if n_active:
        t_adc = float(st.max_per_adc[st.active].max()) * tech.adc_time_at(adc_bits)
        t_read = tech.crossbar_read_ns
        if tech.pipelined_read_adc:
            t_mvm = B * max(t_read, t_adc) + min(t_read, t_adc)
        else:
            t_mvm = B * (t_read + t_adc)
    else:
        t_mvm = 0.0
    n_adc = math.ceil(x.cols / tech.columns_per_adc)
    ref = st.rows_driven.sum() if x.encoding == "offset" else 0
    return Cost(
        tiles=n_tiles,
        tiles_needed=n_active,
        cells=n_active * x.rows * x.cols,
        cells_used=int(st.nonzero.sum()) * x.columns_per_weight + int(ref),
        adcs=n_active * n_adc,
        dacs=n_active * x.rows,
        latency_ns=float(t_mvm * mvms),
        area_breakdown_mm2=area,
        energy_breakdown_nj=energy_nj,
    )


def _check_bits(name: str, v: int) -> int:
    if isinstance(v, bool) or int(v) != v or v < 1:
        raise SpecError(f"{name} = {v!r}; allowed: an integer >= 1")
    return int(v)


def estimate_cost(
    layout: CrossbarLayout,
    mvms: Mapping[str, int],
    *,
    matrices: Mapping[str, Tensor] | None = None,
    device: DeviceSpec | None = None,
    tech: TechnologyTable | str | Path | Mapping[str, Any] | None = None,
    input_bits: int = 8,
    adc_bits: int = 8,
) -> CostReport:
    """Cost of ``layout`` holding ``matrices``, next to its dense baseline.

    Args:
        layout: the crossbar layout (dense, permuted, packed or clustered).
        mvms: MVMs per inference per layer (:func:`~xbarprune.cost.count_mvms`); every layer of
            the layout must be present, extra names are ignored.
        matrices: current mapped matrices per layer, e.g.
            :func:`~xbarprune.mapping.layer_matrices` ``(model, layout)``; zeros are pruned
            weights. None: every placed weight is non-zero (the layout alone).
        device: the memristive cell (used by the ``device`` crossbar energy model).
        tech: technology table, YAML path or mapping (default: the shipped ISAAC table).
        input_bits: activation bits, applied bit-serially (one read cycle each).
        adc_bits: ADC resolution.

    The dense baseline of each layer is its natural dense layout on the same crossbar with
    every weight non-zero; the compressed state is ``layout`` with ``matrices``.
    """
    device = device if device is not None else DeviceSpec()
    tech = load_tech(tech)
    input_bits = _check_bits("input_bits", input_bits)
    adc_bits = _check_bits("adc_bits", adc_bits)
    layers: list[LayerCost] = []
    for layer in layout:
        if layer.name not in mvms:
            raise MappingError(
                f"no MVM count for layer '{layer.name}'; give mvms for every layer of the "
                "layout (see xbarprune.cost.count_mvms)"
            )
        n = mvms[layer.name]
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise SpecError(f"mvms['{layer.name}'] = {n!r}; allowed: an integer >= 0")
        n = int(n)
        mat = None
        if matrices is not None:
            if layer.name not in matrices:
                raise MappingError(
                    f"no matrix for layer '{layer.name}'; pass layer_matrices(model, layout) "
                    "or matrices=None for the unpruned layout"
                )
            mat = matrices[layer.name]
            if tuple(mat.shape) != layer.matrix_shape:
                raise MappingError(
                    f"layer '{layer.name}': matrix shape {tuple(mat.shape)} does not match the "
                    f"layout's mapped matrix {layer.matrix_shape}"
                )
        x = layer.crossbar
        args = (n, x, tech, device, input_bits, adc_bits)
        dense = _cost(_dense_stats(layer, tech), layer.dense_tiles, *args)
        comp = _cost(_layout_stats(layer, mat, tech), layer.n_tiles, *args)
        layers.append(LayerCost(layer.name, layer.kind, n, dense, comp))
    dense_total, comp_total = Cost.zero(), Cost.zero()
    for lc in layers:
        dense_total = dense_total + lc.dense
        comp_total = comp_total + lc.compressed
    return CostReport(
        layers=tuple(layers),
        dense=dense_total,
        compressed=comp_total,
        crossbar=layout.crossbar,
        device=device,
        tech=tech,
        input_bits=input_bits,
        adc_bits=adc_bits,
    )


def estimate_model_cost(
    model: nn.Module,
    layout: CrossbarLayout,
    input_shape: Sequence[int],
    **kwargs: Any,
) -> CostReport:
    """:func:`estimate_cost` with MVMs counted on ``model`` and its current weights."""
    mvms = count_mvms(model, input_shape, layers=list(layout.layers))
    return estimate_cost(layout, mvms, matrices=layer_matrices(model, layout), **kwargs)


def energy_with_peripheral_share(report: CostReport, share: float) -> CostReport:
    """Rescale peripheral energy so that it is ``share`` of the **dense** total energy.

    One factor ``s = share · E_array / ((1 − share) · E_periph)`` (dense totals) multiplies
    every peripheral energy component (DAC, S+H, ADC, shift-and-add, registers) of every
    layer, dense and compressed; array energies, area and latency are unchanged. The
    compressed energy then shows how pruning pays off when peripherals are that share of a
    dense design (e.g. a sensitivity at 0.25 / 0.37 / 0.5). ``share`` must lie in (0, 1).
    """
    check_range("share", share, low=0.0, high=1.0, low_open=True, high_open=True)
    e_array = report.dense.energy_breakdown_nj.get("crossbar", 0.0)
    e_periph = report.dense.peripheral_energy_nj
    if e_array <= 0 or e_periph <= 0:
        raise SpecError(
            "energy_with_peripheral_share needs a report with non-zero dense array and "
            "peripheral energy (a layout with at least one tile and mvms > 0)"
        )
    s = share * e_array / ((1.0 - share) * e_periph)
    layers = tuple(
        dataclasses.replace(
            lc,
            dense=lc.dense.with_peripheral_scale(s),
            compressed=lc.compressed.with_peripheral_scale(s),
        )
        for lc in report.layers
    )
    return dataclasses.replace(
        report,
        layers=layers,
        dense=report.dense.with_peripheral_scale(s),
        compressed=report.compressed.with_peripheral_scale(s),
        peripheral_scale=report.peripheral_scale * s,
        peripheral_share_target=float(share),
    )
