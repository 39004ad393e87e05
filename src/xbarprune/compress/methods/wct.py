"""Weight-Constrained Training (WCT; Bhattacharjee, Bhatnagar, Panda, DATE 2022), in the form of
the same authors' NEAT iterative weight-constraint training (Bhattacharjee et al., IEEE TCAD
2021, eq. 3 and Algorithm 2), since the DATE paper's algorithm is not public.

The mapping scale ``w_max`` of every layer (its largest |w|, the weight that maps to
``g_max``) is fixed from the unconstrained model. Then, for ``rounds`` rounds, the weights are
clipped to ``[-kappa w_max, kappa w_max]`` and trained ``epochs_per_round`` epochs (pruning
masks fixed); a last clip ends it, so ``|w| <= kappa w_max`` holds exactly. Simulated with
the *fixed* ``w_max`` as the mapping clip (``weight_clip`` of
:func:`xbarprune.analog.simulate.evaluate`), every conductance then lies in
``[g_min, g_min + kappa (g_max - g_min)]``: more cells near ``g_min``, less current, smaller
IR drop. ``project=True`` (ours) also clips after every optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from xbarprune.compress.base import (
    CompressContext,
    CompressResult,
    Method,
    plain_info,
    register,
)
from xbarprune.compress.selection import LayerSelection
from xbarprune.errors import check_range
from xbarprune.hardware.conductance import weight_scale
from xbarprune.mapping.layout import CrossbarLayout
from xbarprune.training.masks import MaskSet


def check_kappa(kappa: float, name: str = "wct.kappa") -> None:
    """kappa must lie in (0, 1]."""
    check_range(name, kappa, low=0.0, low_open=True, high=1.0)


@dataclass(frozen=True)
class WCTParams:
    """``kappa``: clip fraction of w_max in (0, 1]; ``rounds``: N of NEAT's Algorithm 2;
    ``epochs_per_round``: training between clips; ``project``: clip after every step too."""

    kappa: float = 0.5
    rounds: int = 3
    epochs_per_round: int = 1
    project: bool = False
    exclude: tuple[str, ...] = field(default_factory=tuple)

    @property
    def layer_selection(self) -> LayerSelection:
        """The layers this method prunes (:mod:`xbarprune.compress.selection`)."""
        return LayerSelection(exclude=tuple(self.exclude))

    def __post_init__(self) -> None:
        check_kappa(self.kappa, "method.params.kappa")
        check_range("method.params.rounds", self.rounds, low=1)
        check_range("method.params.epochs_per_round", self.epochs_per_round, low=0)


def mapping_scales(model: nn.Module, layout: CrossbarLayout, names=None) -> dict[str, float]:
    """Per layer ``w_max`` = max |w| (the analog layer's default mapping scale)."""
    mods = dict(model.named_modules())
    return {n: weight_scale(mods[n].weight.detach()) for n in (names or layout.layers)}


@torch.no_grad()
def clip_weights(model: nn.Module, bounds: dict[str, float]) -> None:
    mods = dict(model.named_modules())
    for n, b in bounds.items():
        mods[n].weight.clamp_(-b, b)


def weight_constrained_training(
    ctx: CompressContext,
    p: WCTParams,
    *,
    masks: MaskSet | None = None,
    w_max: dict[str, float] | None = None,
    post_step=None,
) -> dict:
    """Run WCT on ``ctx.model`` in place; returns info with ``w_max`` (the mapping clip to use
    when simulating) and ``bounds`` (kappa * w_max)."""
    names = p.layer_selection.select(ctx.layout)
    w_max = dict(w_max) if w_max is not None else mapping_scales(ctx.model, ctx.layout, names)
    bounds = {n: p.kappa * w_max[n] for n in names}

    def step(model: nn.Module) -> None:
        if post_step is not None:
            post_step(model)
        clip_weights(model, bounds)

    for r in range(p.rounds):
        clip_weights(ctx.model, bounds)
        ctx.finetune(
            masks,
            p.epochs_per_round,
            tag=f"wct_round{r + 1}",
            post_step=step if p.project else post_step,
        )
    clip_weights(ctx.model, bounds)
    if masks is not None:
        masks.apply(ctx.model)
    at_bound = sum(
        int((dict(ctx.model.named_modules())[n].weight.abs() >= 0.999 * b).sum())
        for n, b in bounds.items()
    )
    return {"kappa": p.kappa, "rounds": p.rounds, "w_max": w_max, "bounds": bounds,
            "weights_at_bound": at_bound}  # fmt: skip


@register
class WCT(Method[WCTParams]):
    name = "wct"
    summary = "weight-constrained training: NEAT-style rounds of clip to kappa*w_max + training"
    Params = WCTParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        masks = MaskSet.from_model(ctx.model, list(ctx.layout.layers))
        info = weight_constrained_training(ctx, self.params, masks=masks)
        ctx.log(
            f"  wct: kappa {self.params.kappa}, {self.params.rounds} rounds; the pipeline "
            "simulates with weight_clip = info['w_max'] (the fixed mapping scale)"
        )
        return CompressResult(masks=masks, info=plain_info(info))
