"""Finite conductance levels: each cell is programmed to the nearest of L levels.

Equation (``L`` levels uniform in the device window, ``dG = g_max - g_min``)::

    G_q = g_min + dG / (L - 1) * round((clip(G, g_min, g_max) - g_min) * (L - 1) / dG)

Defaults: ``levels = None`` takes ``ctx.device.levels`` (``2**bits_per_cell``).
Values outside ``[g_min, g_max]`` are clamped to the window first, so the result is always one
of the L levels. Ties round half to even (``torch.round``).

Reference: the "finite conductance states" model of MemTorch (Lammie et al., Neurocomputing
2022, ``FiniteConductanceStates``: linspace(1/R_off, 1/R_on, n) with nearest-level search).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from xbarprune.hardware.nonideal._checks import check_int
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage


def quantize_levels(g: Tensor, g_min: float, g_max: float, levels: int) -> Tensor:
    """Nearest of ``levels`` conductances uniform in ``[g_min, g_max]`` (after clamping)."""
    check_int("levels", levels, low=2)
    step = (g_max - g_min) / (levels - 1)
    k = torch.round((g.clamp(g_min, g_max) - g_min) / step).clamp(0, levels - 1)
    return g_min + k * step


@dataclass(frozen=True)
class Quantization(ConductanceEffect):
    """Program every cell to the nearest of ``levels`` uniform levels in [g_min, g_max].

    Attributes:
        levels: number of levels (>= 2); ``None`` uses ``ctx.device.levels``.
    """

    levels: int | None = None
    stage: ClassVar[Stage] = "program"

    def __post_init__(self) -> None:
        if self.levels is not None:
            check_int("Quantization.levels", self.levels, low=2)

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        levels = ctx.device.levels if self.levels is None else self.levels
        return quantize_levels(g, ctx.device.g_min, ctx.device.g_max, int(levels))
