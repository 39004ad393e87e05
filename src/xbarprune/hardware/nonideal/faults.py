"""Stuck-at faults: cells frozen at the HRS (SA0, g_min) or the LRS (SA1, g_max).

Model: one uniform draw ``u`` per fault site; ``u < sa0`` -> SA0 (``G = g_min``),
``sa0 <= u < sa0 + sa1`` -> SA1 (``G = g_max``), otherwise the cell keeps its value. The two
fault kinds are therefore disjoint, each site is SA0 with probability ``sa0`` and SA1 with
probability ``sa1`` independently of every other site, and ``sa0 + sa1 <= 1`` is required.

A fault site is a cell (``pattern = "random"``), a whole tile row (``"row"``: a broken word line
or driver, every cell of the row of that tile stuck alike) or a whole tile column
(``"column"``: a broken bit line). Faults are defects of the array, so they hit used and unused
cells alike; a fault on an unused cell carries no input and so costs nothing (this is why
structured pruning that frees whole rows/columns helps). Stage "program": drawn once per trial,
after quantisation, aging and programming variation (a stuck cell ignores programming).

Defaults: none (no faults). Literature values: SA0 1.75 %, SA1 9.04 % (C.-Y. Chen et al., "RRAM
defect modeling and failure analysis based on march test and a novel squeeze-search scheme",
IEEE Trans. Computers 2015; widely quoted as "Chen et al. 2015"; the figures are not checked
against the paper here); MemTorch's tutorial uses LRS 25 %, HRS 10 %; the PRUNIX
reconstruction (shared/papers/prunix.md section 4.1) SA1 1 %, SA0 5 %.

Reference: MemTorch ``DeviceFaults`` (Lammie et al., Neurocomputing 2022); Xia et al., "Stuck-at
fault tolerance in RRAM computing systems", IEEE JETCAS 2018.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal._checks import check_choice, check_prob
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage, rand

FaultPattern = Literal["random", "row", "column"]
FAULT_PATTERNS: tuple[str, ...] = ("random", "row", "column")


def check_fault_rates(sa0: float, sa1: float, prefix: str) -> None:
    """Both rates in [0, 1] and ``sa0 + sa1 <= 1``; errors name ``prefix.sa0``/``sa1``."""
    check_prob(f"{prefix}.sa0", sa0)
    check_prob(f"{prefix}.sa1", sa1)
    if sa0 + sa1 > 1.0 + 1e-12:
        raise SpecError(
            f"{prefix}.sa0 + {prefix}.sa1 = {sa0 + sa1:g} exceeds 1; the two fault kinds are "
            "disjoint, so their rates must sum to at most 1"
        )


def fault_map(shape, sa0: float, sa1: float, pattern: str, ctx: EffectContext, like: Tensor):
    """Boolean masks ``(sa0_mask, sa1_mask)`` of ``shape`` = (..., rows, cols).

    ``pattern = "row"`` draws one value per (..., row) and ``"column"`` one per (..., col);
    the masks are broadcast to ``shape``.
    """
    shape = tuple(shape)
    if pattern == "random":
        draw_shape = shape
    elif pattern == "row":
        draw_shape = (*shape[:-1], 1)
    else:
        draw_shape = (*shape[:-2], 1, shape[-1])
    u = rand(draw_shape, ctx, like)
    m0 = u < sa0
    m1 = (u >= sa0) & (u < sa0 + sa1)
    return m0.expand(shape), m1.expand(shape)


@dataclass(frozen=True)
class StuckAtFaults(ConductanceEffect):
    """Stuck-at-0 (g_min) / stuck-at-1 (g_max) faults per cell, tile row or tile column.

    Attributes:
        sa0: probability that a fault site is stuck at g_min (HRS), in [0, 1].
        sa1: probability that a fault site is stuck at g_max (LRS), in [0, 1].
        pattern: ``"random"`` (per cell), ``"row"`` or ``"column"`` (per tile line).
    """

    sa0: float = 0.0
    sa1: float = 0.0
    pattern: FaultPattern = "random"
    stage: ClassVar[Stage] = "program"

    def __post_init__(self) -> None:
        check_fault_rates(self.sa0, self.sa1, "StuckAtFaults")
        check_choice("StuckAtFaults.pattern", self.pattern, FAULT_PATTERNS)

    @property
    def is_ideal(self) -> bool:
        return self.sa0 == 0 and self.sa1 == 0

    @property
    def elementwise(self) -> bool:
        return self.pattern == "random"

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        if self.sa0 == 0 and self.sa1 == 0:
            return g
        if g.dim() < 2:
            raise SpecError(f"StuckAtFaults needs (..., rows, cols) conductances, got {g.shape}")
        m0, m1 = fault_map(g.shape, self.sa0, self.sa1, self.pattern, ctx, g)
        out = torch.where(m0, torch.full_like(g, ctx.device.g_min), g)
        return torch.where(m1, torch.full_like(g, ctx.device.g_max), out)
