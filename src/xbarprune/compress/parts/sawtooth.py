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

The simulator's grid (issue #21): the uniform grid above is the set of weights the simulator
(:mod:`xbarprune.hardware.conductance` + :class:`~xbarprune.hardware.nonideal.Quantization`)
can program only for the differential encoding with ``Quantization.levels == device.levels``.
:func:`simulator_grid` enumerates that set, in units of ``w_max``, for any crossbar and
quantisation (offset encoding: ``w = w_max (2u - 1)``, L**k levels with step
``2 w_max / (L**k - 1)``, zero not a level for even L**k; a quantiser with other levels than
the device), and ``GroupSawtooth(units=...)`` regularises towards it (nearest level instead of
the uniform rounding). For the differential encoding with matching levels both are the same
grid.
"""

from __future__ import annotations

import itertools
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


def simulator_grid(
    cells_per_weight: int,
    device_levels: int,
    encoding: str = "differential",
    quant_levels: int | None = None,
) -> tuple[float, ...]:
    """The weights the simulator can program, in units of ``w_max``, sorted (float64).

    Mirrors :func:`xbarprune.hardware.conductance.encode` / ``decode`` followed by
    :func:`~xbarprune.hardware.nonideal.quantization.quantize_levels` on every cell:

    * k = 1: a cell holds ``u`` continuous, quantised to ``Q = quant_levels`` levels
      (``device_levels`` when None: the programmable levels, also when the non-ideality
      model has no quantisation and the cell is continuous);
    * k > 1: ``q = round(u (L**k - 1))``, digit ``d_j`` on a cell at ``d_j / (L - 1)``, then
      quantised to Q levels; ``u = sum_j s_j cell_j`` with ``s_j = L**j (L-1)/(L**k-1)``;
    * differential: ``w = +-u`` (the other column of the pair at G_min);
      offset: ``w = 2u - 1``.
    """
    k, L = int(cells_per_weight), int(device_levels)
    Q = L if quant_levels is None else int(quant_levels)

    def cell(x: float) -> float:  # quantize_levels in normalised units
        return round(x * (Q - 1)) / (Q - 1)

    if k == 1:
        us = {i / (Q - 1) for i in range(Q)}
    else:
        sig = [L**j * (L - 1) / (L**k - 1) for j in range(k)]
        cells = [cell(d / (L - 1)) for d in range(L)]
        us = {
            sum(s * cells[d] for s, d in zip(sig, digits, strict=True))
            for digits in itertools.product(range(L), repeat=k)
        }
    if encoding == "differential":
        ws = set(us) | {-u for u in us}
    elif encoding == "offset":
        ws = {2 * u - 1 for u in us}
    else:
        raise ValueError(f"encoding {encoding!r}; allowed: differential, offset")
    # merge values equal up to float rounding (sums of slice significances)
    out: list[float] = []
    for w in sorted(ws):
        if not out or w - out[-1] > 1e-9:
            out.append(w)
    return tuple(out)


def quantize_to_units(w: Tensor, w_max: float | Tensor, units: Tensor) -> Tensor:
    """Nearest level of ``w_max * units`` (``units`` sorted, in [-1, 1]); no gradient."""
    u = units.to(w.device, w.dtype)
    x = (w / w_max).detach().contiguous()
    mids = (u[1:] + u[:-1]) / 2
    idx = torch.bucketize(x, mids)
    return (w_max * u[idx]).detach()


def _quantize(w: Tensor, w_max: Tensor, n_levels: int, units: Tensor | None) -> Tensor:
    if units is None:
        return quantize_to_grid(w, level_step(w_max, n_levels), n_levels)
    return quantize_to_units(w, w_max, units)


def _unit_step(n_levels: int, units: Tensor | None) -> float:
    """Smallest level spacing in units of w_max (the tolerance scale of on_level_fraction)."""
    if units is None or units.numel() < 2:
        return 1.0 / (n_levels - 1)
    return float((units[1:] - units[:-1]).min())


@dataclass
class GroupSawtooth:
    """``R_GS`` as a training-loop regulariser ``reg(model, progress) -> Tensor``.

    Attributes:
        layout: the crossbar layout whose groups are used.
        n_levels: magnitude codes per sign, L**k (device levels ** cells per weight).
        kind: group kind (tile_column, tile_row, tile, filter, channel, weight).
        lam: strength after warm-up.
        warmup: fraction of training over which lam ramps linearly from 0.
        units: the level set in units of w_max (:func:`simulator_grid`), or None for the
            uniform differential grid of ``n_levels`` magnitude codes.
    """

    layout: CrossbarLayout
    n_levels: int = 16
    kind: str = "tile_column"
    lam: float = 1e-3
    warmup: float = 0.3
    units: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_range("regularizer.lam", self.lam, low=0.0)
        check_range("regularizer.warmup", self.warmup, low=0.0, high=1.0)
        if int(self.n_levels) < 2:
            check_range("regularizer.n_levels", self.n_levels, low=2)
        self._units = None if self.units is None else torch.tensor(self.units, dtype=torch.float64)

    def quantize(self, mat: Tensor) -> Tensor:
        """Q(mat): the nearest grid level, with w_max = max |mat| (detached, no gradient)."""
        w_max = mat.detach().abs().max().clamp_min(_EPS)
        return _quantize(mat, w_max, self.n_levels, self._units)

    def penalty(self, model: nn.Module) -> Tensor:
        """Un-scaled sum_g sqrt(|g|) ||s(W_g)||_2 / N_groups."""
        mods = dict(model.named_modules())
        total: Tensor | float = 0.0
        n_groups = 0
        for layer in self.layout:
            w = mods[layer.name].weight
            mat = weight_to_matrix(w)
            s = (mat - self.quantize(mat)).abs()
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
    model: nn.Module,
    layout: CrossbarLayout,
    n_levels: int,
    tol: float = 0.05,
    units: tuple[float, ...] | None = None,
) -> float:
    """Share of non-zero weights within ``tol * Delta`` of a grid level (a diagnostic).

    ``units``: the level set in units of w_max (:func:`simulator_grid`; Delta is then its
    smallest spacing times w_max), or None for the uniform differential grid.
    """
    mods = dict(model.named_modules())
    u = None if units is None else torch.tensor(units, dtype=torch.float64)
    near = tot = 0
    for layer in layout:
        mat = weight_to_matrix(mods[layer.name].weight.detach())
        w_max = mat.abs().max().clamp_min(_EPS)
        delta = w_max * _unit_step(n_levels, u)
        nz = mat != 0
        s = (mat - _quantize(mat, w_max, n_levels, u)).abs()
        near += int(((s <= tol * delta) & nz).sum())
        tot += int(nz.sum())
    return near / max(tot, 1)


def grid_diagnostics(
    model: nn.Module,
    layout: CrossbarLayout,
    n_levels: int,
    units: tuple[float, ...] | None = None,
    *,
    aged_top: float | None = None,
    tol: float = 0.05,
) -> dict:
    """How well the weights sit on the simulator's grid (PRUNIX, Alshaarawy et al. 2022,
    Sec. III-A: the sawtooth pulls weights onto the programmable levels), each layer in units
    of its own w_max = max |W| (what programming uses):

    - ``on_level``: :func:`on_level_fraction` (non-zero weights within ``tol`` steps of a
      level, level 0 included);
    - ``on_nonzero_level``: the same among weights whose nearest level is not 0 (``on_level``
      counts small weights near 0 as on level 0);
    - ``quant_rel_err``: ||W - Q(W)|| / ||W|| over the non-zero weights;
    - ``aging_clipped_share``: share of non-zero weights above ``aged_top`` (the aged window's
      top weight / w_max), None without it;
    - ``w_max``: per layer.
    """
    u = torch.tensor(units, dtype=torch.float64) if units is not None else None
    if u is None:
        m = n_levels - 1
        u = torch.arange(-m, m + 1, dtype=torch.float64) / m
    step = float((u[1:] - u[:-1]).min())
    mods = dict(model.named_modules())
    err2 = nrm2 = 0.0
    above = nz_tot = near_lv = on_lv = 0
    w_max: dict[str, float] = {}
    for layer in layout:
        mat = weight_to_matrix(mods[layer.name].weight.detach()).double()
        wm = float(mat.abs().max()) or 1.0
        w_max[layer.name] = wm
        nz = mat != 0
        q = quantize_to_units(mat, wm, u)
        err2 += float(((mat - q)[nz] ** 2).sum())
        nrm2 += float((mat[nz] ** 2).sum())
        nz_tot += int(nz.sum())
        lv = q != 0
        near_lv += int(lv.sum())
        on_lv += int((((mat - q).abs() <= tol * wm * step) & lv).sum())
        if aged_top is not None:
            above += int(((mat.abs() / wm > aged_top) & nz).sum())
    return {
        "on_level": on_level_fraction(model, layout, n_levels, tol=tol, units=units),
        "on_nonzero_level": on_lv / max(near_lv, 1),
        "quant_rel_err": (err2 / max(nrm2, 1e-30)) ** 0.5,
        "aging_clipped_share": above / max(nz_tot, 1) if aged_top is not None else None,
        "w_max": w_max,
    }
