"""Exact weight <-> conductance conversion (the "mapping" of one layer's weights to cells).

For a layer with mapped matrix W (rows = inputs, cols = outputs) and scale ``w_max``
(the layer's max |w| or a user clip), let ``u = |w| / w_max`` (differential) or
``u = (w / w_max + 1) / 2`` (offset), ``dG = g_max - g_min``, ``L`` levels, ``k`` cells per
weight.

* k = 1: ``G = g_min + u * dG`` (continuous; quantisation to levels is a separate
  non-ideality, :class:`~xbarprune.hardware.nonideal.Quantization`).
* k > 1 (bit slicing): ``q = round(u * (L**k - 1))``, digit ``d_j = (q // L**j) % L``,
  ``G_j = g_min + d_j / (L - 1) * dG``.

Decoding uses the slice significances ``s_j = L**j (L - 1) / (L**k - 1)`` (``s_0 = 1``
when k = 1), ``u = sum_j s_j (G_j - G_ref) / dG``, with ``G_ref`` the negative column of the
pair (differential, ``w = w_max (u+ - u-)``) or the tile's reference column (offset,
``w = w_max (2u - 1)``). Decoding is exact for k = 1 and exact up to the 1/(L**k - 1)
quantisation step for k > 1 (tests check both).

Cell tensors have shape ``(k, S, R, C)`` with ``S = 2`` (G+, G-) for the differential and
``S = 1`` for the offset encoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec


def weight_scale(w: Tensor, clip: float | None = None) -> float:
    """Mapping scale w_max: ``clip`` if given, else max |w| (1.0 for an all-zero layer)."""
    if clip is not None:
        return float(clip)
    m = float(w.detach().abs().max()) if w.numel() else 0.0
    return m if m > 0 else 1.0


def slice_significance(xbar: CrossbarSpec, dev: DeviceSpec, device=None) -> Tensor:
    """Per-slice significance s_j = L**j (L-1)/(L**k-1) (shape (k,)), float64 -> float32."""
    k, L = xbar.cells_per_weight, dev.levels
    if k == 1:
        return torch.ones(1, device=device)
    j = torch.arange(k, dtype=torch.float64)
    s = L**j * (L - 1) / (float(L) ** k - 1)
    return s.to(dtype=torch.float32, device=device)


def _digits(u: Tensor, xbar: CrossbarSpec, dev: DeviceSpec) -> Tensor:
    """Normalised cell values in [0, 1] per slice, shape (k, *u.shape)."""
    k, L = xbar.cells_per_weight, dev.levels
    if k == 1:
        return u.unsqueeze(0)
    full = float(L) ** k - 1
    q = torch.round(u.double().clamp(0, 1) * full)
    out = []
    for j in range(k):
        d = torch.remainder(torch.floor(q / float(L) ** j), L)
        out.append(d / (L - 1))
    return torch.stack(out).to(u.dtype)


def encode(w: Tensor, w_max: float, xbar: CrossbarSpec, dev: DeviceSpec) -> Tensor:
    """Mapped matrix (R, C) -> target cell conductances (k, S, R, C) in siemens.

    Weights beyond ``w_max`` (a clip) saturate at g_max.
    """
    if xbar.encoding == "differential":
        u_pos = (w.clamp(min=0) / w_max).clamp(max=1)
        u_neg = ((-w).clamp(min=0) / w_max).clamp(max=1)
        d = torch.stack([_digits(u_pos, xbar, dev), _digits(u_neg, xbar, dev)], dim=1)
    else:
        u = ((w / w_max).clamp(-1, 1) + 1) / 2
        d = _digits(u, xbar, dev).unsqueeze(1)
    return dev.g_min + d * dev.g_range


def decode(
    g: Tensor,
    w_max: float,
    xbar: CrossbarSpec,
    dev: DeviceSpec,
    g_ref: Tensor | None = None,
) -> Tensor:
    """Cell conductances (k, S, R, C) -> effective mapped matrix (R, C).

    ``g_ref`` (offset encoding only): reference-cell conductance broadcastable to (R, C)
    (default: ideal g_min).
    """
    s = slice_significance(xbar, dev, g.device).to(g.dtype).view(-1, 1, 1)
    if xbar.encoding == "differential":
        u = (s * (g[:, 0] - g[:, 1])).sum(0) / dev.g_range
        return w_max * u
    ref = dev.g_min if g_ref is None else g_ref
    u = (s * (g[:, 0] - ref)).sum(0) / dev.g_range
    return w_max * (2 * u - 1)


def decode_slices(
    g: Tensor, xbar: CrossbarSpec, dev: DeviceSpec, g_ref: Tensor | None = None
) -> Tensor:
    """Per-slice normalised differential values (k, R, C) *without* significance and w_max.

    Used by per-tile ADC simulation, where each slice's column current is digitised
    separately before the digital shift-and-add.
    """
    if xbar.encoding == "differential":
        return (g[:, 0] - g[:, 1]) / dev.g_range
    ref = dev.g_min if g_ref is None else g_ref
    return (g[:, 0] - ref) / dev.g_range
