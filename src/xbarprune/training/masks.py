"""Pruning masks kept fixed during fine-tuning.

A :class:`MaskSet` maps layer names to bool masks of the layer's weight shape. ``apply``
zeroes pruned weights (and the matching optimizer state: momentum, Adam moments), so pruned
weights are *exactly* zero after every optimizer step and their cells can stay unprogrammed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn


class MaskSet:
    def __init__(self, masks: dict[str, Tensor] | None = None):
        self.masks: dict[str, Tensor] = {k: v.bool() for k, v in (masks or {}).items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, name: str) -> Tensor:
        return self.masks[name]

    def __setitem__(self, name: str, mask: Tensor) -> None:
        self.masks[name] = mask.bool()

    def items(self):
        return self.masks.items()

    @classmethod
    def from_model(cls, model: nn.Module, names) -> MaskSet:
        """Masks = (weight != 0) for the named layers (recovers masks of a pruned model)."""
        mods = dict(model.named_modules())
        return cls({n: mods[n].weight.detach() != 0 for n in names})

    @torch.no_grad()
    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        mods = dict(model.named_modules())
        for name, m in self.masks.items():
            w = mods[name].weight
            mk = m.to(w.device)
            w.mul_(mk)
            if optimizer is not None:
                state = optimizer.state.get(w, {})
                for v in state.values():
                    if isinstance(v, Tensor) and v.shape == w.shape:
                        v.mul_(mk)

    @torch.no_grad()
    def mask_grads(self, model: nn.Module) -> None:
        mods = dict(model.named_modules())
        for name, m in self.masks.items():
            w = mods[name].weight
            if w.grad is not None:
                w.grad.mul_(m.to(w.device))

    def sparsity(self) -> float:
        tot = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / max(tot, 1)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone().cpu() for k, v in self.masks.items()}

    def combine(self, other: MaskSet) -> MaskSet:
        out = dict(self.masks)
        for k, v in other.items():
            out[k] = out[k] & v.to(out[k].device) if k in out else v
        return MaskSet(out)
