"""Weight regularisers used as baselines and by the methods (all vectorised over groups).

Each regulariser is called as ``reg(model, progress) -> Tensor`` inside the training loop;
``progress`` in [0, 1] drives a linear warm-up of the strength: ``lam * min(1, progress /
warmup)`` (warmup = 0 disables the ramp). Biases and BatchNorm are never regularised.

* L1:  lam * sum_l ||W_l||_1 / N        (N = number of regularised weights)
* L2:  lam * sum_l ||W_l||_2^2 / N
* group lasso (Wen et al. 2016, SSL): lam * sum_l sum_g sqrt(|g|) ||W_g||_2 / N_groups
  over the crossbar groups of the layout (tile columns, tile rows, tiles, filters, channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xbarprune.errors import SpecError, check_range
from xbarprune.mapping.layout import CrossbarLayout
from xbarprune.mapping.matrix import weight_to_matrix


def ramp(lam: float, progress: float, warmup: float) -> float:
    if warmup <= 0:
        return lam
    return lam * min(1.0, max(progress, 0.0) / warmup)


def _weights(model: nn.Module, layout: CrossbarLayout) -> dict[str, Tensor]:
    mods = dict(model.named_modules())
    return {layer.name: mods[layer.name].weight for layer in layout}


@dataclass
class _ElementwisePower:
    """lam * sum_l ||W_l||_p^p / N (p = 1: L1, p = 2: L2)."""

    layout: CrossbarLayout
    lam: float = 1e-4
    warmup: float = 0.0
    power: int = 1

    def __call__(self, model: nn.Module, progress: float = 1.0) -> Tensor:
        ws = _weights(model, self.layout)
        n = sum(w.numel() for w in ws.values())
        total = sum(w.abs().pow(self.power).sum() for w in ws.values())
        assert isinstance(total, Tensor), "a layout has at least one layer"
        return ramp(self.lam, progress, self.warmup) * total / n


def L1(layout: CrossbarLayout, lam: float = 1e-4, warmup: float = 0.0) -> _ElementwisePower:
    return _ElementwisePower(layout, lam, warmup, power=1)


def L2(layout: CrossbarLayout, lam: float = 1e-4, warmup: float = 0.0) -> _ElementwisePower:
    return _ElementwisePower(layout, lam, warmup, power=2)


@dataclass
class GroupLasso:
    layout: CrossbarLayout
    kind: str = "tile_column"
    lam: float = 1e-4
    warmup: float = 0.0

    def __call__(self, model: nn.Module, progress: float = 1.0) -> Tensor | float:
        """The penalty (a float 0.0 only for a layout without layers)."""
        ws = _weights(model, self.layout)
        total: Tensor | float = 0.0
        n_groups = 0
        for layer in self.layout:
            g = layer.groups(self.kind)
            mat = weight_to_matrix(ws[layer.name])
            sq = g.sizes.to(mat.device, mat.dtype).sqrt()
            vals = g.gather(mat)
            norms = (vals.pow(2).sum(1) + 1e-16).sqrt()
            total = total + (sq * norms).sum()
            n_groups += len(g)
        return ramp(self.lam, progress, self.warmup) * total / max(n_groups, 1)


def make_regularizer(name: str, layout: CrossbarLayout, **kw):
    """``none``/``l1``/``l2``/``group_lasso`` (sawtooth lives in :mod:`.sawtooth`)."""
    check_range("lam", float(kw.get("lam", 0.0)), low=0.0)
    if name == "none":
        return None
    if name == "l1":
        return L1(layout, kw.get("lam", 1e-4), kw.get("warmup", 0.0))
    if name == "l2":
        return L2(layout, kw.get("lam", 1e-4), kw.get("warmup", 0.0))
    if name == "group_lasso":
        return GroupLasso(
            layout, kw.get("kind", "tile_column"), kw.get("lam", 1e-4), kw.get("warmup", 0.0)
        )
    raise SpecError(
        f"unknown regularizer {name!r}; allowed: none, l1, l2, group_lasso, group_sawtooth"
    )


def zero_like_loss(model: nn.Module) -> Tensor:
    p = next(model.parameters())
    return torch.zeros((), device=p.device, dtype=p.dtype)
