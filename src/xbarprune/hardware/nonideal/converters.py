"""Uniform DAC / ADC quantisation of input voltages and column currents (partial sums).

``quantize_uniform(x, bits, full_scale, signed)``::

    n    = 2**(bits - 1) - 1   (signed: n steps on each side of 0, symmetric, 0 is a code)
    n    = 2**bits - 1         (unsigned: codes 0..n over [0, full_scale])
    step = full_scale / n
    q    = step * round(clip(x, lo, full_scale) / step),  lo = -full_scale (signed) or 0

Rounding is half-to-even (``torch.round``). The signed form drops the most negative two's
complement code so that the grid is symmetric around 0; a 1-bit signed converter therefore
has no non-zero level and is rejected: use ``signed=False`` for binary inputs.
``full_scale`` may be a tensor broadcastable to ``x`` (e.g. one full scale per tile column);
where it is 0 the output is 0.

Choosing the full scale (calibration) is the analog layer's business; :class:`ADC` may carry a
fixed one.

Reference: aihwkit ``IOParameters`` (``inp_res``, ``out_res``, ``inp_bound``, ``out_bound``);
MemTorch ``Quantize`` (linear mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal._checks import check_int, check_positive


def levels_per_side(bits: int, signed: bool = True) -> int:
    """Number of non-zero steps on one side: ``2**(bits-1)-1`` (signed) or ``2**bits-1``."""
    check_int("bits", bits, low=1, high=32)
    n = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    if n < 1:
        raise SpecError(
            f"bits = {bits} gives no non-zero level for a signed converter; allowed: bits >= 2 "
            "when signed (use signed=False for a 1-bit unsigned converter)"
        )
    return n


def quantize_uniform(
    x: Tensor, bits: int, full_scale: float | Tensor, signed: bool = True
) -> Tensor:
    """Round ``x`` to the uniform ``bits``-bit grid over ``[-full_scale, full_scale]``.

    (``[0, full_scale]`` when ``signed`` is False); values beyond the range clip. When ``x``
    requires a gradient (e.g. BatchNorm fine-tuning through the analog model) the rounding
    passes it straight through and the clipping stops it outside the range.
    """
    if x.requires_grad and torch.is_grad_enabled():
        with torch.no_grad():
            q = quantize_uniform(x.detach(), bits, full_scale, signed)
            lo = -full_scale if signed else 0.0
        xc = torch.maximum(
            torch.minimum(x, torch.as_tensor(full_scale).to(x)), torch.as_tensor(lo).to(x)
        )
        return xc + (q - xc).detach()
    n = levels_per_side(bits, signed)
    if isinstance(full_scale, int | float):  # fast path: scalar full scale, fused in place
        if not full_scale >= 0:
            raise SpecError("full_scale must be >= 0 (and not NaN)")
        if full_scale == 0:
            return torch.zeros_like(x)
        lo = -float(full_scale) if signed else 0.0
        q = x.clamp(lo, float(full_scale)).mul_(n / full_scale).round_()
        return q.mul_(full_scale / n)
    fs = torch.as_tensor(full_scale, dtype=x.dtype, device=x.device)
    if bool((fs < 0).any()) or bool(torch.isnan(fs).any()):
        raise SpecError("full_scale must be >= 0 (and not NaN)")
    safe = torch.where(fs > 0, fs, torch.ones_like(fs))
    lo = -safe if signed else torch.zeros_like(safe)
    u = torch.maximum(torch.minimum(x, safe), lo) / safe * n
    q = torch.round(u) / n * safe
    return torch.where(fs > 0, q, torch.zeros_like(q))


@dataclass(frozen=True)
class DAC:
    """Input digital-to-analog converter with ``bits`` of resolution (1..32)."""

    bits: int

    def __post_init__(self) -> None:
        check_int("DAC.bits", self.bits, low=1, high=32)

    def __call__(self, x: Tensor, full_scale: float | Tensor, signed: bool = True) -> Tensor:
        """Quantise input values ``x`` on the grid spanning ``full_scale``."""
        return quantize_uniform(x, self.bits, full_scale, signed)


@dataclass(frozen=True)
class ADC:
    """Column analog-to-digital converter.

    Attributes:
        bits: resolution (1..32).
        full_scale: fixed full scale in the units of the values it digitises, or ``None`` to
            take one per call (calibrated by the analog layer).
    """

    bits: int
    full_scale: float | None = None

    def __post_init__(self) -> None:
        check_int("ADC.bits", self.bits, low=1, high=32)
        if self.full_scale is not None:
            check_positive("ADC.full_scale", self.full_scale)

    def __call__(
        self, x: Tensor, full_scale: float | Tensor | None = None, signed: bool = True
    ) -> Tensor:
        """Quantise ``x``; ``full_scale`` overrides the fixed one (one of them is required)."""
        fs = self.full_scale if full_scale is None else full_scale
        if fs is None:
            raise SpecError("ADC.full_scale is None: pass full_scale= or calibrate the ADC")
        return quantize_uniform(x, self.bits, fs, signed)
