"""Crossbar and device descriptions (DESIGN.md `hardware/`).

A :class:`CrossbarSpec` describes one physical array (rows x cols cells) and how a weight is
encoded on it; a :class:`DeviceSpec` describes one memristive cell (conductance window,
programmable levels, read voltage). Both are frozen, validated dataclasses: a bad value raises
:class:`~xbarprune.errors.SpecError` naming the field and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from xbarprune.errors import CrossbarTooSmallError, SpecError, check_range

Encoding = Literal["differential", "offset"]


@dataclass(frozen=True)
class DeviceSpec:
    """One memristive cell.

    Attributes:
        g_min: lowest programmable conductance (HRS), siemens.
        g_max: highest programmable conductance (LRS), siemens.
        levels: number of programmable conductance levels, uniform in [g_min, g_max]
            (``levels = 2**bits_per_cell``; 2 is a binary cell).
        read_voltage: read voltage applied for a full-scale input, volts.
    """

    g_min: float = 1e-6
    g_max: float = 1e-4
    levels: int = 16
    read_voltage: float = 0.2

    def __post_init__(self) -> None:
        check_range("DeviceSpec.g_min", self.g_min, low=0.0)
        check_range("DeviceSpec.g_max", self.g_max, low=0.0, low_open=True)
        if not self.g_min < self.g_max:
            raise SpecError(
                f"DeviceSpec needs g_min < g_max, got g_min={self.g_min:g} S >= "
                f"g_max={self.g_max:g} S"
            )
        if int(self.levels) != self.levels or self.levels < 2:
            raise SpecError(f"DeviceSpec.levels = {self.levels!r}; allowed: an integer >= 2")
        check_range("DeviceSpec.read_voltage", self.read_voltage, low=0.0, low_open=True)

    @property
    def g_range(self) -> float:
        """Programmable window g_max - g_min (siemens)."""
        return self.g_max - self.g_min

    @property
    def on_off_ratio(self) -> float:
        return math.inf if self.g_min == 0 else self.g_max / self.g_min

    @property
    def bits_per_cell(self) -> float:
        return math.log2(self.levels)

    @classmethod
    def from_resistance(
        cls, r_on: float, r_off: float, levels: int = 16, read_voltage: float = 0.2
    ) -> DeviceSpec:
        """Build from LRS/HRS resistances in ohms (g_max = 1/r_on, g_min = 1/r_off)."""
        check_range("r_on", r_on, low=0.0, low_open=True)
        check_range("r_off", r_off, low=0.0, low_open=True)
        return cls(g_min=1.0 / r_off, g_max=1.0 / r_on, levels=levels, read_voltage=read_voltage)


@dataclass(frozen=True)
class CrossbarSpec:
    """One crossbar array (tile) and the weight encoding used on it.

    Attributes:
        rows: word lines (inputs) per tile.
        cols: bit lines (outputs) per tile.
        cells_per_weight: cells holding one weight magnitude (bit slicing); with k cells of L
            levels a weight has L**k magnitude codes, slice j weighted by L**j.
        encoding: ``"differential"``: each weight takes a pair of columns (G+ - G-), so a
            weight needs 2k columns; ``"offset"``: one column per slice holding
            w/w_max mapped to [0, 1], plus one reference column per tile whose current
            (all cells at g_min) is subtracted, and the offset -w_max * sum(x) removed digitally.
    """

    rows: int = 128
    cols: int = 128
    cells_per_weight: int = 1
    encoding: Encoding = "differential"

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "cells_per_weight"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise SpecError(f"CrossbarSpec.{name} = {v!r}; allowed: an integer >= 1")
        if self.encoding not in ("differential", "offset"):
            raise SpecError(
                f"CrossbarSpec.encoding = {self.encoding!r}; allowed: 'differential', 'offset'"
            )
        if self.weights_per_row < 1:
            need = self.columns_per_weight + (1 if self.encoding == "offset" else 0)
            raise CrossbarTooSmallError(
                f"a {self.rows}x{self.cols} crossbar cannot hold one weight: the "
                f"'{self.encoding}' encoding with cells_per_weight={self.cells_per_weight} "
                f"needs at least {need} columns"
            )

    @property
    def sides(self) -> int:
        """Cells per weight and bit slice: 2 for the differential pair (G+, G-), 1 offset."""
        return 2 if self.encoding == "differential" else 1

    @property
    def columns_per_weight(self) -> int:
        """Physical columns one logical output column takes (2k differential, k offset)."""
        return self.cells_per_weight * self.sides

    def row_bands(self, n_rows: int) -> int:
        """Tile rows (bands of ``rows`` inputs) that ``n_rows`` matrix rows take."""
        return -(-int(n_rows) // self.rows)

    def col_bands(self, n_cols: int) -> int:
        """Tile columns (of ``weights_per_row`` outputs) that ``n_cols`` matrix columns take."""
        return -(-int(n_cols) // self.weights_per_row)

    def tile_grid(self, n_rows: int, n_cols: int) -> tuple[int, int]:
        """``(row bands, column bands)`` of tiles an ``n_rows x n_cols`` matrix block takes."""
        return self.row_bands(n_rows), self.col_bands(n_cols)

    def tiles(self, n_rows: int, n_cols: int) -> int:
        """Tiles an ``n_rows x n_cols`` matrix block takes on its own:
        ``ceil(n_rows / rows) * ceil(n_cols / weights_per_row)``."""
        nr, nc = self.tile_grid(n_rows, n_cols)
        return nr * nc

    @property
    def reference_columns(self) -> int:
        """Physical reference columns per tile (1 for the offset encoding)."""
        return 1 if self.encoding == "offset" else 0

    @property
    def weights_per_row(self) -> int:
        """Logical output columns (weights per input row) one tile holds."""
        return (self.cols - self.reference_columns) // self.columns_per_weight

    @property
    def cells_per_tile(self) -> int:
        return self.rows * self.cols
