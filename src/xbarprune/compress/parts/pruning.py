"""Magnitude-based selection of weights or crossbar groups to prune.

Scores are group RMS values ``||w_g||_2 / sqrt(|g|)`` (for single weights: |w|), so groups of
different sizes (e.g. the short last tile-column of a layer) compete fairly. A layer is pruned by
dropping its lowest-score groups until at least ``sparsity * weights`` weights are gone; the
global scope ranks the groups of all layers together. Groups already all-zero go first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from xbarprune.compress.parts.importance import RMS, Importance
from xbarprune.errors import CompressionError, check_range
from xbarprune.mapping.layout import CrossbarLayout, Groups, layer_matrices
from xbarprune.mapping.matrix import matrix_to_weight
from xbarprune.training.masks import MaskSet

Scope = Literal["uniform", "global"]


def group_scores(mat: Tensor, groups: Groups) -> Tensor:
    """RMS magnitude per group (G,): the default :class:`~.importance.RMSImportance`."""
    return RMS(mat, groups)


def keep_for_sparsity(scores: Tensor, sizes: Tensor, n_remove: float) -> Tensor:
    """Keep flags (G,): drop lowest scores until the dropped sizes sum to >= n_remove.

    Exactly the smallest prefix (in score order) reaching the budget is dropped, but at least
    one group is always kept; ties are broken by group index, so the result is deterministic.
    """
    order = torch.argsort(scores, stable=True)
    cum = torch.cumsum(sizes[order].double(), 0)
    n_drop = int((cum < n_remove).sum()) + 1 if n_remove > 0 else 0
    n_drop = min(n_drop, len(cum) - 1)  # never drop every group of a layer
    keep = torch.ones(len(scores), dtype=torch.bool)
    keep[order[:n_drop]] = False
    return keep


def layer_group_mask(
    mat: Tensor, groups: Groups, sparsity: float, importance: Importance = RMS
) -> Tensor:
    """Mapped-matrix keep mask (R, C) removing >= ``sparsity`` of the layer's weights, the
    groups of lowest ``importance`` (default RMS) first."""
    check_range("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    n = mat.numel()
    keep = keep_for_sparsity(importance(mat, groups), groups.sizes, sparsity * n)
    if sparsity == 0:
        keep[:] = True
    return groups.weight_mask(keep, tuple(mat.shape))


def magnitude_masks(
    model: nn.Module,
    layout: CrossbarLayout,
    *,
    sparsity: float | Mapping[str, float],
    kind: str = "weight",
    scope: Scope = "uniform",
    prunable: list[str] | None = None,
    importance: Importance = RMS,
) -> MaskSet:
    """Masks (weight shape) pruning ``kind`` groups by magnitude.

    ``sparsity`` is one target for every prunable layer (``uniform``), the overall target
    (``global``, counted over prunable layers), or a per-layer mapping. Groups are ranked by
    ``importance`` (default :class:`~.importance.RMSImportance`: ``|w|`` for single weights).
    """
    mats = layer_matrices(model, layout)
    names = prunable if prunable is not None else list(layout.layers)
    unknown = [n for n in names if n not in layout]
    if unknown:
        raise CompressionError(f"cannot prune unknown layer(s): {', '.join(unknown)}")
    masks = MaskSet()
    if scope == "global" and not isinstance(sparsity, Mapping):
        check_range("sparsity", float(sparsity), low=0.0, high=1.0, high_open=True)
        all_scores, all_sizes, owners = [], [], []
        for i, n in enumerate(names):
            g = layout[n].groups(kind)
            all_scores.append(importance(mats[n], g))
            all_sizes.append(g.sizes)
            owners.append(torch.full((len(g),), i))
        scores, sizes = torch.cat(all_scores), torch.cat(all_sizes)
        owner = torch.cat(owners)
        total = sum(mats[n].numel() for n in names)
        keep = keep_for_sparsity(scores, sizes, float(sparsity) * total)
        for i, n in enumerate(names):
            g = layout[n].groups(kind)
            m = g.weight_mask(keep[owner == i], tuple(mats[n].shape))
            masks[n] = matrix_to_weight(m, layout[n].weight_shape)
        return masks
    if scope not in ("uniform", "global"):
        raise CompressionError(f"scope = {scope!r}; allowed: 'uniform', 'global'")
    for n in names:
        s = sparsity[n] if isinstance(sparsity, Mapping) else float(sparsity)
        if isinstance(sparsity, Mapping) and n not in sparsity:
            continue
        m = layer_group_mask(mats[n], layout[n].groups(kind), s, importance)
        masks[n] = matrix_to_weight(m, layout[n].weight_shape)
    return masks


def weight_sparsity(model: nn.Module, layout: CrossbarLayout) -> float:
    mats = layer_matrices(model, layout)
    tot = sum(m.numel() for m in mats.values())
    nz = sum(int((m != 0).sum()) for m in mats.values())
    return 1.0 - nz / max(tot, 1)


def group_sparsity(model: nn.Module, layout: CrossbarLayout, kind: str) -> float:
    """Fraction of ``kind`` groups that are entirely zero."""
    mats = layer_matrices(model, layout)
    tot = zero = 0
    for layer in layout:
        g = layer.groups(kind)
        nz = g.nonzero(mats[layer.name])
        tot += len(g)
        zero += int((~nz).sum())
    return zero / max(tot, 1)
