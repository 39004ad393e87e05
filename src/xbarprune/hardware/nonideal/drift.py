"""Conductance drift: the power-law relaxation of amorphous PCM (and of some ReRAM states).

Equation (per cell, ``t = ctx.time_s`` seconds after programming)::

    G(t) = G(t0) * (t / t0) ** (-nu)          for t > t0
    G(t) = G(t0)                              for t <= t0
    nu   = max(nu_mean + nu_std * N, 0),  N ~ N(0, 1) drawn per cell

Defaults: ``nu_mean = 0.1`` (typical of amorphous PCM), ``nu_std = 0`` (every cell drifts
alike, which under the differential encoding is a pure per-layer rescale that a calibration
cancels), ``t0 = 1 s``. PRUNIX-style runs use ``nu ~ N(0.1, 0.02)``; MemTorch's default
``t0`` is 1e-12 s (so t = 1e3 s gives 10**-1.5), its tutorial uses t0 = 1 s (t = 1e3 s gives
0.501).

Drift is physics, not noise: it acts on every cell (used or not), including reference cells.
When ``nu_std > 0`` the per-cell exponents are drawn on every call, also for ``t <= t0``, so
that the random stream seen by later effects does not depend on the time.

References: Ielmini, Lacaita, Mantegazza, "Recovery and drift dynamics of resistance and
threshold voltages in phase-change memories", IEEE TED 2007; Boybat et al., "Impact of
conductance drift on multi-PCM synaptic architectures", NVMTS 2018; MemTorch
``conductance_drift`` (Lammie et al., Neurocomputing 2022).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from xbarprune.hardware.nonideal._checks import check_nonneg, check_positive
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage, randn


def drift_factor(t: float, t0: float, nu: float | Tensor) -> float | Tensor:
    """Multiplicative drift ``(t / t0) ** (-nu)`` for ``t > t0``, else 1 (same type as ``nu``)."""
    check_nonneg("t", t)
    check_positive("t0", t0)
    if isinstance(nu, Tensor):
        if t <= t0:
            return torch.ones_like(nu)
        return torch.pow(torch.as_tensor(t / t0, dtype=nu.dtype, device=nu.device), -nu)
    if t <= t0:
        return 1.0
    return float((t / t0) ** (-float(nu)))


def draw_nu(shape, nu_mean: float, nu_std: float, ctx: EffectContext, like: Tensor) -> Tensor:
    """Per-cell drift exponents ``max(nu_mean + nu_std * N, 0)``."""
    if nu_std == 0:
        return torch.full(shape, max(nu_mean, 0.0), dtype=like.dtype, device=like.device)
    return (nu_mean + nu_std * randn(shape, ctx, like)).clamp(min=0.0)


@dataclass(frozen=True)
class Drift(ConductanceEffect):
    """Power-law conductance drift to ``ctx.time_s`` (stage "time").

    Attributes:
        nu_mean: mean drift exponent (>= 0).
        nu_std: per-cell std of the exponent (>= 0); draws are clipped at 0.
        t0: time of the reference read after programming, seconds (> 0).
    """

    nu_mean: float = 0.1
    nu_std: float = 0.0
    t0: float = 1.0
    stage: ClassVar[Stage] = "time"

    def __post_init__(self) -> None:
        check_nonneg("Drift.nu_mean", self.nu_mean)
        check_nonneg("Drift.nu_std", self.nu_std)
        check_positive("Drift.t0", self.t0)

    @property
    def is_ideal(self) -> bool:
        return self.nu_mean == 0 and self.nu_std == 0

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        check_nonneg("EffectContext.time_s", ctx.time_s)
        nu = draw_nu(g.shape, self.nu_mean, self.nu_std, ctx, g)
        if ctx.time_s <= self.t0:
            return g
        return g * drift_factor(ctx.time_s, self.t0, nu)
