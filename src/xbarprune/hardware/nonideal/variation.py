"""Programming (device-to-device / cycle-to-cycle write) variation, drawn once per trial.

Equations (``N`` standard normal per cell, ``dG = g_max - g_min``)::

    absolute:   G' = G + sigma * dG * N
    relative:   G' = G * (1 + sigma * N)
    lognormal:  G' = G * exp(sigma * N)

then ``G' = max(G', 0)``: a conductance cannot be negative, so the clamp removes the (rare for
small sigma) draws below zero; this slightly biases the mean upward for cells near 0 S when
sigma is large. There is no clamp at g_max (a programmed cell may overshoot the nominal
window). Only cells marked in ``ctx.used`` are perturbed; unused cells (never programmed, no
input) keep their value. The noise is drawn for the whole tensor either way, so the random
stream does not depend on the mask.

Defaults: ``mode = "relative"``. Typical sigma: 0.02-0.1 for multilevel ReRAM (e.g. the 10 %
sigma/mu used by RxNN, Jain et al. TCAD 2020); lognormal is the usual fit of HRS/LRS spreads.

Reference: MemTorch/aihwkit "programming noise"; Jain et al., "RxNN", IEEE TCAD 2020.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from xbarprune.hardware.nonideal._checks import check_choice, check_nonneg
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage, randn

VariationMode = Literal["absolute", "relative", "lognormal"]
VARIATION_MODES: tuple[str, ...] = ("absolute", "relative", "lognormal")


def perturb(g: Tensor, noise: Tensor, sigma: float, mode: str, g_range: float) -> Tensor:
    """Apply ``sigma``-scaled standard-normal ``noise`` to ``g`` in ``mode``; clamp at 0."""
    if mode == "absolute":
        out = g + sigma * g_range * noise
    elif mode == "relative":
        out = g * (1.0 + sigma * noise)
    elif mode == "lognormal":
        out = g * torch.exp(sigma * noise)
    else:  # pragma: no cover - validated by the callers
        raise ValueError(mode)
    return out.clamp(min=0.0)


def only_used(new: Tensor, old: Tensor, used: Tensor | None) -> Tensor:
    """``new`` where ``used`` (all cells when ``used`` is None), ``old`` elsewhere."""
    if used is None:
        return new
    return torch.where(used.to(torch.bool), new, old)


@dataclass(frozen=True)
class _Perturbation(ConductanceEffect):
    """Gaussian/log-normal perturbation of used cells (see :func:`perturb`)."""

    sigma: float
    mode: str = "relative"
    _modes: ClassVar[tuple[str, ...]] = VARIATION_MODES

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_nonneg(f"{name}.sigma", self.sigma)
        check_choice(f"{name}.mode", self.mode, self._modes)

    @property
    def is_ideal(self) -> bool:
        return self.sigma == 0

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        if self.sigma == 0:
            return g
        noise = randn(g.shape, ctx, g)
        new = perturb(g, noise, self.sigma, self.mode, ctx.device.g_range)
        return only_used(new, g, ctx.used)


@dataclass(frozen=True)
class ProgrammingVariation(_Perturbation):
    """Gaussian/lognormal programming error, once per Monte Carlo trial (stage "program").

    Attributes:
        sigma: spread (fraction of the window, of G, or log-std, depending on ``mode``); >= 0.
        mode: ``"absolute"``, ``"relative"`` or ``"lognormal"``.
    """

    mode: VariationMode = "relative"
    stage: ClassVar[Stage] = "program"
