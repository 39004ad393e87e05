"""Baseline pruning: unstructured and structured (crossbar-group) magnitude pruning.

Iterative to a target weight sparsity S with the cubic schedule of Zhu & Gupta (2017),
``S_i = S (1 - (1 - i/n)^3)`` for steps i = 1..n, fine-tuning ``epochs_per_step`` epochs with
the masks fixed between steps (the pipeline's fine-tune stage follows the last step). Masks only
grow: a weight pruned at step i stays pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xbarprune.compress.base import CompressContext, CompressResult, Method, register
from xbarprune.compress.parts.pruning import magnitude_masks, weight_sparsity
from xbarprune.compress.selection import LayerSelection
from xbarprune.errors import SpecError, check_range
from xbarprune.mapping.layout import GROUP_KINDS
from xbarprune.mapping.permute import pack_layout
from xbarprune.training.masks import MaskSet


def cubic_schedule(target: float, steps: int) -> list[float]:
    """Zhu & Gupta (2017) gradual pruning targets for steps 1..n."""
    return [target * (1 - (1 - i / steps) ** 3) for i in range(1, steps + 1)]


@dataclass(frozen=True)
class MagnitudeParams:
    sparsity: float = 0.8
    kind: str = "weight"
    scope: Literal["uniform", "global"] = "uniform"
    steps: int = 3
    epochs_per_step: int = 1
    exclude: tuple[str, ...] = field(default_factory=tuple)
    pack: bool = True

    @property
    def layer_selection(self) -> LayerSelection:
        """The layers this method prunes (:mod:`xbarprune.compress.selection`)."""
        return LayerSelection(exclude=tuple(self.exclude))

    def __post_init__(self) -> None:
        check_range("method.params.sparsity", self.sparsity, low=0.0, high=1.0, high_open=True)
        check_range("method.params.steps", self.steps, low=1)
        check_range("method.params.epochs_per_step", self.epochs_per_step, low=0)
        if self.kind not in GROUP_KINDS:
            raise SpecError(
                f"method.params.kind = {self.kind!r}; allowed: {', '.join(GROUP_KINDS)}"
            )


def iterative_magnitude(ctx: CompressContext, p: MagnitudeParams) -> CompressResult:
    names = p.layer_selection.select(ctx.layout)
    masks = MaskSet.from_model(ctx.model, names)
    history = []
    targets = cubic_schedule(p.sparsity, p.steps)
    for i, s in enumerate(targets):
        new = magnitude_masks(
            ctx.model, ctx.layout, sparsity=s, kind=p.kind, scope=p.scope, prunable=names
        )
        masks = masks.combine(new)
        masks.apply(ctx.model)
        rec = {
            "step": i + 1,
            "target": s,
            "weight_sparsity": weight_sparsity(ctx.model, ctx.layout),
        }
        if i < len(targets) - 1:
            ctx.finetune(masks, p.epochs_per_step, tag=f"prune_step{i + 1}")
        history.append(rec)
        ctx.log(
            f"  prune step {i + 1}/{p.steps}: target {s:.3f}, "
            f"weight sparsity {rec['weight_sparsity']:.3f}"
        )
    layout = pack_layout(ctx.layout, ctx.model, p.kind) if p.pack else None
    return CompressResult(
        masks=masks,
        layout=layout,
        info={"schedule": history, "kind": p.kind, "scope": p.scope, "packed": p.pack},
    )


@register
class Magnitude(Method[MagnitudeParams]):
    name = "magnitude"
    summary = "unstructured magnitude pruning, iterative (cubic schedule) to a target sparsity"
    Params = MagnitudeParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        p = self.params
        if p.kind != "weight":
            p = MagnitudeParams(**{**p.__dict__, "kind": "weight"})
        return iterative_magnitude(ctx, p)


@dataclass(frozen=True)
class GroupMagnitudeParams(MagnitudeParams):
    kind: str = "tile_column"


@register
class GroupMagnitude(Method[GroupMagnitudeParams]):
    name = "group-magnitude"
    summary = (
        "structured magnitude pruning of crossbar groups (tile, tile_column, tile_row, "
        "filter, channel), iterative to a target weight sparsity"
    )
    Params = GroupMagnitudeParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        return iterative_magnitude(ctx, self.params)


@dataclass(frozen=True)
class NoneParams:
    pass


@register
class NoCompression(Method[NoneParams]):
    name = "none"
    summary = "no compression: the dense model, mapped and simulated as it is"
    Params = NoneParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        return CompressResult(masks=MaskSet(), info={})
