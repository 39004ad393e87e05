"""Statistical PCM inference model (programming noise, state-dependent drift, 1/f read noise).

A re-implementation from the published equations of IBM aihwkit's ``PCMLikeNoiseModel``
(aihwkit ``src/aihwkit/inference/noise/pcm.py``; Nandakumar et al., "Phase-change memory
models for deep learning training and inference", ICECS 2019; Joshi et al., Nat. Commun.
11, 2473, 2020). aihwkit works in microsiemens with ``g_max = 25 uS``; here every formula is
written in the normalised target ``x = G_T / g_max`` (``g_max`` of ``ctx.device``), so a cell
at ``x`` behaves as an aihwkit cell at ``25 x`` uS and noise standard deviations given in uS
by the fit convert to siemens as ``sigma_S = sigma_uS / 25 * g_max``. The model assumes
``g_min = 0`` as aihwkit does (a differential pair with one device at 0 per sign); with
``g_min > 0`` it is applied unchanged to ``x = G / g_max``.

Equations (``N1, N2, N3`` independent standard normals per cell; ``c = prog_coeff``):

1. Programming noise (additive, state dependent)::

       sigma_prog(x) = (c0 + c1 x + c2 x**2) / 25 * g_max * prog_noise_scale
       G_P = max(G_T + sigma_prog(x) * N1, 0)

2. Drift with target-dependent exponent (``x_c = max(x, 1e-7)``)::

       mu_nu    = clip(-0.0155 ln x_c + 0.0244, 0.049, 0.1)
       sigma_nu = clip(-0.0125 ln x_c - 0.0059, 0.008, 0.045)
       nu       = |mu_nu + sigma_nu N2| * drift_scale
       G_D      = G_P * (t / t0) ** (-nu),     t = time_s + t0

   (``time_s`` counts from the end of programming; the first read is at ``t0``).

3. Read noise accumulated as 1/f noise over ``[t_read, t]``::

       Q_s     = min(0.0088 / max((G_P / g_max) ** 0.65, 1e-3), 0.2)
       sigma_r = Q_s * sqrt(ln((t + t_read) / (2 t_read))) * read_noise_scale
       G       = max(G_D + |G_D| * sigma_r * N3, 0)

Defaults (aihwkit): ``prog_coeff = (0.26348, 1.9650, -1.1731)`` (uS, fitted at g_max =
25 uS), ``t0 = 20 s``, ``t_read = 250 ns``, all scales 1.

Stage "time": the result depends on ``ctx.time_s``, and the drift exponent depends on the
*target* conductance, which is only known before programming noise, so the three steps form
one effect. It runs after the "program" stage (quantisation, aging, variation, faults), and is
applied to the cells in ``ctx.used`` only (unused cells are never programmed). The read noise
here is the one accumulated draw of aihwkit's ``drift_analog_weights`` (once per trial at the
given time); add :class:`~xbarprune.hardware.nonideal.ReadNoise` for a fresh draw per
inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal._checks import check_nonneg, check_positive
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage, randn
from xbarprune.hardware.nonideal.variation import only_used

#: aihwkit's PCMLikeNoiseModel programming-noise polynomial, in uS at g_max = 25 uS.
PCM_PROG_COEFF: tuple[float, float, float] = (0.26348, 1.9650, -1.1731)
#: the g_max (uS) the aihwkit coefficients were fitted at.
PCM_G_MAX_REF_US = 25.0
_ZERO_CLIP = 1e-7


def pcm_prog_sigma(x: Tensor, coeff=PCM_PROG_COEFF) -> Tensor:
    """Programming-noise std in units of g_max for normalised targets ``x = G_T / g_max``."""
    poly = torch.zeros_like(x)
    for c in reversed(tuple(coeff)):
        poly = poly * x + c
    return poly / PCM_G_MAX_REF_US


def pcm_drift_nu_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(mu_nu, sigma_nu)`` of the drift exponent for normalised targets ``x``."""
    lx = torch.log(x.abs().clamp(min=_ZERO_CLIP))
    mu = (-0.0155 * lx + 0.0244).clamp(0.049, 0.1)
    sd = (-0.0125 * lx - 0.0059).clamp(0.008, 0.045)
    return mu, sd


def pcm_read_sigma(x_prog: Tensor, t: float, t_read: float) -> Tensor:
    """Relative std of the 1/f read noise accumulated up to ``t`` (``t = time_s + t0``)."""
    q_s = (0.0088 / (x_prog.abs() ** 0.65).clamp(min=1e-3)).clamp(max=0.2)
    return q_s * math.sqrt(math.log((t + t_read) / (2.0 * t_read)))


@dataclass(frozen=True)
class PCMStatistical(ConductanceEffect):
    """aihwkit-style statistical PCM: programming noise, drift to ``ctx.time_s``, read noise.

    Attributes:
        prog_coeff: programming-noise polynomial ``c0 + c1 x + c2 x**2`` in uS at 25 uS.
        t0: time of the first read after programming (drift reference), seconds.
        t_read: read-pulse duration of the 1/f noise integral, seconds.
        prog_noise_scale, read_noise_scale, drift_scale: multipliers (>= 0; 0 disables).
    """

    prog_coeff: tuple[float, ...] = PCM_PROG_COEFF
    t0: float = 20.0
    t_read: float = 250e-9
    prog_noise_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_scale: float = 1.0
    stage: ClassVar[Stage] = "time"

    def __post_init__(self) -> None:
        coeff = tuple(self.prog_coeff)
        if not coeff or not all(
            isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c)
            for c in coeff
        ):
            raise SpecError(
                f"PCMStatistical.prog_coeff = {self.prog_coeff!r}; allowed: finite numbers"
            )
        check_positive("PCMStatistical.t0", self.t0)
        check_positive("PCMStatistical.t_read", self.t_read)
        for name in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
            check_nonneg(f"PCMStatistical.{name}", getattr(self, name))

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        return self.apply_with_programmed(g, ctx)[0]

    def apply_tracked(self, g: Tensor, ref: Tensor, ctx: EffectContext) -> tuple[Tensor, Tensor]:
        """``apply_with_programmed``: the programmed state is the new reference."""
        return self.apply_with_programmed(g, ctx)

    def apply_with_programmed(self, g: Tensor, ctx: EffectContext) -> tuple[Tensor, Tensor]:
        """(conductances at ``ctx.time_s``, conductances right after programming).

        The second is the reference of global drift compensation (aihwkit reads the tile
        right after programming, i.e. with programming noise but before drift).
        """
        check_nonneg("EffectContext.time_s", ctx.time_s)
        g_max = ctx.device.g_max
        x = g / g_max
        n1 = randn(g.shape, ctx, g)
        n2 = randn(g.shape, ctx, g)
        n3 = randn(g.shape, ctx, g)
        # 1. programming noise
        sig_p = pcm_prog_sigma(x, self.prog_coeff) * g_max * self.prog_noise_scale
        g_p = (g + sig_p * n1).clamp(min=0.0)
        # 2. drift (exponent from the target)
        mu, sd = pcm_drift_nu_stats(x)
        nu = (mu + sd * n2).abs() * self.drift_scale
        t = ctx.time_s + self.t0
        g_d = g_p * torch.pow(torch.as_tensor(t / self.t0, dtype=g.dtype, device=g.device), -nu)
        # 3. accumulated 1/f read noise
        sig_r = pcm_read_sigma(g_p / g_max, t, self.t_read) * self.read_noise_scale
        out = (g_d + g_d.abs() * sig_r * n3).clamp(min=0.0)
        return only_used(out, g, ctx.used), only_used(g_p, g, ctx.used)
