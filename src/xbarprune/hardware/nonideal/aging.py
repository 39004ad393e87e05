"""Aging: the usable conductance window shrinks with programming (SET/RESET) cycles.

Law (our choice; a power law normalised at a reference endurance, documented so that it can
be replaced). With ``x = cycles / n_ref`` the shrink fraction is::

    s(N) = x ** exponent            (s = 1 after n_ref cycles)

and the aged window ``[g_lo, g_hi]`` is, for ``scale = "bounds"`` (default)::

    g_hi(N) = g_max * (1 - alpha * s)          (R_on rises:  LRS weakens)
    g_lo(N) = g_min * (1 + beta  * s)          (R_off falls: HRS leaks)

i.e. each bound moves by a fixed fraction of itself after ``n_ref`` cycles (the
``[G_min (1 + beta), G_max (1 - alpha)]`` window of the PRUNIX reconstruction,
shared/papers/prunix.md section 2.4), or, for ``scale = "window"``::

    g_hi(N) = g_max - alpha * s * (g_max - g_min)
    g_lo(N) = g_min + beta  * s * (g_max - g_min)

i.e. the window loses ``alpha`` of its fresh width from the top and ``beta`` from the bottom.
Saturation: the shrink stops when the window has closed; past the cycle count where
``g_lo == g_hi`` both bounds stay at that collapse point (``s`` is capped at ``s*``, with
``s* = (g_max - g_min) / (alpha g_max + beta g_min)`` for "bounds" and ``1 / (alpha + beta)``
for "window").

The effect (stage "program", after quantisation): a cell programmed outside the aged window
saturates at its edge, ``G' = clip(G, g_lo, g_hi)`` (the write-verify loop cannot reach a target
beyond the aged range). It acts on every cell (aging is a property of the array).

Defaults: ``alpha = beta = 0.2`` (PRUNIX reconstruction, section 4.1), ``n_ref = 1e6`` cycles (a
typical metal-oxide ReRAM endurance), ``exponent = 0.5`` (sub-linear degradation; an
assumption, no fit). ``cycles = n_ref`` reproduces the plain alpha/beta shrink.

References: S. Zhang, G. L. Zhang, B. Li, H. Li, U. Schlichtmann, "Aging-aware lifetime
enhancement for memristor-based neuromorphic computing", DATE 2019 (aging as a shrinking
resistance range with the number of programming operations); Lammie, Rahimi Azghadi, Ielmini,
"Empirical metal-oxide RRAM device endurance and retention model for deep learning
simulations", Semicond. Sci. Technol. 2021 (LRS/HRS converge with cycling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from xbarprune.hardware.nonideal._checks import (
    check_choice,
    check_nonneg,
    check_positive,
    check_prob,
)
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage
from xbarprune.hardware.spec import DeviceSpec

AgingScale = Literal["bounds", "window"]
AGING_SCALES: tuple[str, ...] = ("bounds", "window")


def shrink_fraction(cycles: float, n_ref: float = 1e6, exponent: float = 0.5) -> float:
    """Uncapped shrink fraction ``s = (cycles / n_ref) ** exponent`` (1 at ``n_ref``)."""
    check_nonneg("cycles", cycles)
    check_positive("n_ref", n_ref)
    check_positive("exponent", exponent)
    return (cycles / n_ref) ** exponent


def collapse_fraction(device: DeviceSpec, alpha: float, beta: float, scale: str) -> float:
    """Shrink fraction ``s*`` at which the aged window closes (``inf`` when it never does)."""
    if scale == "window":
        return math.inf if alpha + beta == 0 else 1.0 / (alpha + beta)
    den = alpha * device.g_max + beta * device.g_min
    return math.inf if den == 0 else device.g_range / den


def aged_window(
    device: DeviceSpec,
    cycles: float,
    alpha: float = 0.2,
    beta: float = 0.2,
    n_ref: float = 1e6,
    exponent: float = 0.5,
    scale: AgingScale = "bounds",
) -> tuple[float, float]:
    """``(g_lo, g_hi)`` of ``device`` after ``cycles`` programming cycles (see module doc)."""
    check_aging(alpha, beta, scale, "aged_window")
    s = min(shrink_fraction(cycles, n_ref, exponent), collapse_fraction(device, alpha, beta, scale))
    g_min, g_max, dg = device.g_min, device.g_max, device.g_range
    if scale == "window":
        g_lo, g_hi = g_min + beta * s * dg, g_max - alpha * s * dg
    else:
        g_lo, g_hi = g_min * (1.0 + beta * s), g_max * (1.0 - alpha * s)
    if g_lo > g_hi:  # rounding at the collapse point
        g_lo = g_hi = 0.5 * (g_lo + g_hi)
    return g_lo, g_hi


def check_aging(alpha: float, beta: float, scale: str, prefix: str) -> None:
    """Validate alpha, beta in [0, 1] and the scale, naming ``prefix.field``."""
    check_prob(f"{prefix}.alpha", alpha)
    check_prob(f"{prefix}.beta", beta)
    check_choice(f"{prefix}.scale", scale, AGING_SCALES)


@dataclass(frozen=True)
class Aging(ConductanceEffect):
    """Clip every cell into the aged window after ``cycles`` programming cycles.

    Attributes:
        cycles: programming cycles the array has seen (>= 0).
        alpha: top shrink after ``n_ref`` cycles, in [0, 1] (fraction of g_max, or of the
            window).
        beta: bottom shrink after ``n_ref`` cycles, in [0, 1] (fraction of g_min, or of the
            window).
        n_ref: reference endurance in cycles at which the shrink equals alpha/beta (> 0).
        exponent: power-law exponent of the shrink in cycles (> 0).
        scale: ``"bounds"`` (each bound moves by a fraction of itself) or ``"window"``.
    """

    cycles: float
    alpha: float = 0.2
    beta: float = 0.2
    n_ref: float = 1e6
    exponent: float = 0.5
    scale: AgingScale = "bounds"
    stage: ClassVar[Stage] = "program"

    def __post_init__(self) -> None:
        check_nonneg("Aging.cycles", self.cycles)
        check_positive("Aging.n_ref", self.n_ref)
        check_positive("Aging.exponent", self.exponent)
        check_aging(self.alpha, self.beta, self.scale, "Aging")

    @property
    def is_ideal(self) -> bool:
        return self.cycles == 0 or (self.alpha == 0 and self.beta == 0)

    def window(self, device: DeviceSpec) -> tuple[float, float]:
        """The aged ``(g_lo, g_hi)`` for ``device``."""
        return aged_window(
            device, self.cycles, self.alpha, self.beta, self.n_ref, self.exponent, self.scale
        )

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        g_lo, g_hi = self.window(ctx.device)
        if g_lo <= ctx.device.g_min and g_hi >= ctx.device.g_max:
            return g
        return g.clamp(g_lo, g_hi)
