"""Group Sawtooth Regularization (PRUNIX, Alshaarawy, Amirsoleimani & Genov, ISCAS 2022).

Only the PRUNIX abstract is public; this is the reconstruction of shared/papers/prunix.md §2.2
(labelled [inference] there), documented in docs/methods/prunix.md.

Weight grid of a differentially mapped layer with L device levels and k cells per weight:
``Delta_l = w_max,l / (L**k - 1)`` (w_max,l = max|W_l|, detached, recomputed every step), levels
``Q = {m Delta : m = -(L**k - 1) .. L**k - 1}``; zero is a level (both cells at G_min).

Per-weight sawtooth (a symmetric triangle wave, period Delta, peaks Delta/2)::

    Q(w)  = Delta * clip(round(w / Delta), -(L**k-1), L**k-1)
    s(w)  = |w - Q(w)|             ds/dw = sign(w - Q(w))  (a.e.)

It is 0 on every level, equals |w| for |w| <= Delta/2 (L1 near zero, so it sparsifies) and
|w| - w_max outside the range. Group form (recommended primary form of the notes)::

    R_GS(W) = lam(t) * sum_l sum_g sqrt(|g|) * ||s(W_{l,g})||_2 / N_groups

over the crossbar groups of the layout (tile columns by default). A group whose weights are all
within Delta/2 of zero is penalised exactly like group lasso (so whole groups are driven to zero
and crossbars freed); a group of large weights is pulled onto conductance levels (so
quantisation and drift cost less). ``lam(t)`` ramps linearly over the first ``warmup`` fraction
of training. Vectorised over groups: one gather per layer, no Python loop over groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xbarprune.compress.parts.regularizers import ramp
from xbarprune.errors import check_range
from xbarprune.mapping.layout import CrossbarLayout
from xbarprune.mapping.matrix import weight_to_matrix

_EPS = 1e-12


def level_step(w_max: float | Tensor, n_levels: int) -> float | Tensor:
    """Delta = w_max / (n_levels - 1) for n_levels magnitude codes per sign (incl. 0)."""
    return w_max / (n_levels - 1)


def quantize_to_grid(w: Tensor, delta: float | Tensor, n_levels: int) -> Tensor:
    """Q(w) = Delta * clip(round(w / Delta), -(n-1), n-1) (no gradient)."""
    m = n_levels - 1
    return (delta * torch.clamp(torch.round(w / delta), -m, m)).detach()


def sawtooth(w: Tensor, delta: float | Tensor, n_levels: int) -> Tensor:
    """Per-weight sawtooth s(w) = |w - Q(w)| (PRUNIX notes §2.2)."""
    return (w - quantize_to_grid(w, delta, n_levels)).abs()


@dataclass
class GroupSawtooth:
    """``R_GS`` as a training-loop regulariser ``reg(model, progress) -> Tensor``.

    Attributes:
        layout: the crossbar layout whose groups are used.
        n_levels: magnitude codes per sign, L**k (device levels ** cells per weight).
        kind: group kind (tile_column, tile_row, tile, filter, channel, weight).
        lam: strength after warm-up.
        warmup: fraction of training over which lam ramps linearly from 0.
    """

    layout: CrossbarLayout
    n_levels: int = 16
    kind: str = "tile_column"
    lam: float = 1e-3
    warmup: float = 0.3

    def __post_init__(self) -> None:
        check_range("regularizer.lam", self.lam, low=0.0)
        check_range("regularizer.warmup", self.warmup, low=0.0, high=1.0)
        if int(self.n_levels) < 2:
            check_range("regularizer.n_levels", self.n_levels, low=2)

    def penalty(self, model: nn.Module) -> Tensor:
        """Un-scaled sum_g sqrt(|g|) ||s(W_g)||_2 / N_groups."""
        mods = dict(model.named_modules())
        total: Tensor | float = 0.0
        n_groups = 0
        for layer in self.layout:
            w = mods[layer.name].weight
            mat = weight_to_matrix(w)
            delta = level_step(mat.detach().abs().max().clamp_min(_EPS), self.n_levels)
            s = sawtooth(mat, delta, self.n_levels)
            g = layer.groups(self.kind)
            vals = g.gather(s)
            norms = (vals.pow(2).sum(1) + _EPS).sqrt()
            total = total + (g.sizes.to(w.device, w.dtype).sqrt() * norms).sum()
            n_groups += len(g)
        if not isinstance(total, Tensor):
            p = next(model.parameters())
            return p.new_zeros(())
        return total / max(n_groups, 1)

    def __call__(self, model: nn.Module, progress: float = 1.0) -> Tensor:
        return ramp(self.lam, progress, self.warmup) * self.penalty(model)


def on_level_fraction(
    model: nn.Module, layout: CrossbarLayout, n_levels: int, tol: float = 0.05
) -> float:
    """Share of non-zero weights within ``tol * Delta`` of a grid level (a diagnostic)."""
    mods = dict(model.named_modules())
    near = tot = 0
    for layer in layout:
        mat = weight_to_matrix(mods[layer.name].weight.detach())
        delta = level_step(mat.abs().max().clamp_min(_EPS), n_levels)
        nz = mat != 0
        s = sawtooth(mat, delta, n_levels)
        near += int(((s <= tol * delta) & nz).sum())
        tot += int(nz.sum())
    return near / max(tot, 1)
