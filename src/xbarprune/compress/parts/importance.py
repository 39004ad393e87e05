"""Scores per crossbar group: one :class:`Importance` interface for every pruning method.

An importance is called as ``importance(mat, groups) -> Tensor (G,)``: ``mat`` is a layer's
mapped matrix (R, C) and ``groups`` its :class:`~xbarprune.mapping.layout.Groups` (single
weights, tile rows, tile columns, ...); a larger score means "more important, keep". The
interface follows Torch-Pruning's ``Importance.__call__(group) -> Tensor`` (Fang et al.,
"DepGraph", CVPR 2023), over crossbar groups instead of dependency groups.

Implementations:

- :class:`RMSImportance`: ``||w_g||_2 / sqrt(|g|)`` (for single weights: ``|w|``, i.e.
  magnitude pruning, Han et al., NeurIPS 2015); groups of different sizes (the short last
  tile column of a layer) compete fairly. The score of :func:`~.pruning.layer_group_mask`,
  :func:`~.pruning.magnitude_masks` and ADMM's group budget allocation.
- :class:`L2Importance`: ``||w_g||_2``, the score of ADMM's Euclidean projection Π_P onto
  "at most α non-zero groups" (Ma, Yuan et al., ASP-DAC 2020, eqs. 5-7; ``project_structure``
  in :mod:`xbarprune.compress.methods.admm`).

LGD (Liang et al.) is not an importance: it chooses rows by a regression on sampled
activations (:mod:`.lgd`), not by a score per group of the weights.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from xbarprune.mapping.layout import Groups


@runtime_checkable
class Importance(Protocol):
    """``importance(mat, groups) -> Tensor (G,)``: one score per group, larger = keep."""

    def __call__(self, mat: Tensor, groups: Groups) -> Tensor: ...


class L2Importance:
    """Per-group L2 norm ``||w_g||_2`` (G,)."""

    def __call__(self, mat: Tensor, groups: Groups) -> Tensor:
        return groups.norms(mat)


class RMSImportance:
    """Per-group RMS magnitude ``||w_g||_2 / sqrt(|g|)`` (G,); ``|w|`` for single weights."""

    def __call__(self, mat: Tensor, groups: Groups) -> Tensor:
        return groups.norms(mat) / groups.sizes.to(mat.dtype).clamp_min(1).sqrt()


RMS = RMSImportance()
L2 = L2Importance()
