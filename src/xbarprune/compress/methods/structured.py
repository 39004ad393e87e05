"""C/F, XCS and XRS structured pruning (Bhattacharjee, Bhatnagar, Panda, DATE 2022, after
Meng et al. 2021 for XCS/XRS; the DATE paper's body is not public, the schemes follow its
abstract, the labels of docs/methods/sparse_nonideal.md mark what is ours).

All three: train with a group lasso on the scheme's groups (Wen et al. 2016; ``lam = 0``
skips it: plain magnitude pruning), threshold the groups by RMS magnitude so that a target
weight sparsity is reached, fine-tune with the masks fixed (``ft_epochs`` here, or the
pipeline's fine-tune stage), then pack the survivors onto as few crossbars as possible and
report the crossbar compression rate ``CCR = crossbars(dense) / crossbars(packed)``.

* ``cf``: whole input channels and filters. The groups are Torch-Pruning's coupled channels
  (:func:`xbarprune.compress.parts.purification.trace_channel_groups`): channel ``r`` of a group is
  the producers' filters ``r`` (with their BatchNorm scale and shift and bias), and the
  consumers' input rows ``r`` (residual partners go together); the classifier's outputs are
  never pruned. The same fraction of every group's channels is pruned (``select="uniform"``,
  bisected to the target sparsity over all mapped layers) or one model-wide threshold
  (``"global"``). The packed layout drops the pruned rows and columns (the tiles of the
  physically smaller model); :func:`remove_cf` removes them physically with Torch-Pruning
  (:func:`~xbarprune.compress.parts.purification.remove_unused_paths`).
* ``xcs``: whole tile-columns (the ``crossbar.rows``-row segment of one filter in one tile);
  packed per row band (:func:`xbarprune.mapping.permute.pack_columns`).
* ``xrs``: whole tile-rows (the ``weights_per_row`` segment of one input row in one tile);
  packed per column band (:func:`xbarprune.mapping.permute.pack_rows`).

XCS/XRS thresholds are per layer (``uniform``: every prunable layer loses the target
fraction) or model-wide (``global``); by default the first mapped layer and the classifier
(the last mapped layer when it is a Linear) are not pruned (``exclude_first_last``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from xbarprune.compress.base import (
    CompressContext,
    CompressResult,
    Method,
    plain_info,
    register,
)
from xbarprune.compress.parts.pruning import magnitude_masks, weight_sparsity
from xbarprune.compress.parts.purification import (
    Trace,
    _bn_after,
    remove_unused_paths,
    shrink,
    trace_channel_groups,
)
from xbarprune.compress.parts.regularizers import GroupLasso
from xbarprune.compress.selection import LayerSelection
from xbarprune.errors import CompressionError, SpecError, check_range
from xbarprune.mapping.layout import CrossbarLayout, layer_matrices
from xbarprune.mapping.permute import pack_layout
from xbarprune.training.masks import MaskSet

SCHEMES: tuple[str, ...] = ("cf", "xcs", "xrs")
GROUP_KIND = {"xcs": "tile_column", "xrs": "tile_row"}
PACK_KIND = {"cf": "weight", "xcs": "tile_column", "xrs": "tile_row"}


@dataclass(frozen=True)
class StructuredParams:
    """Parameters of ``cf`` / ``xcs`` / ``xrs`` (the ``method.params`` section)."""

    sparsity: float = 0.5
    lam: float = 1e-3
    reg_epochs: int = 2
    warmup: float = 0.3
    select: Literal["uniform", "global"] = "uniform"
    ft_epochs: int = 0
    exclude_first_last: bool = True
    exclude: tuple[str, ...] = field(default_factory=tuple)
    pack: bool = True
    #: ``cf`` only: remove the pruned channels/filters physically (Torch-Pruning); the run
    #: stores the shrunk architecture and later stages work on the smaller network
    physical: bool = False

    @property
    def layer_selection(self) -> LayerSelection:
        """The layers this method prunes (:mod:`xbarprune.compress.selection`)."""
        return LayerSelection(
            exclude=tuple(self.exclude),
            keep_first=self.exclude_first_last,
            keep_last="linear" if self.exclude_first_last else False,
            first_last_min_layers=3,
        )

    def __post_init__(self) -> None:
        check_range("method.params.sparsity", self.sparsity, low=0.0, high=1.0, high_open=True)
        check_range("method.params.lam", self.lam, low=0.0)
        check_range("method.params.reg_epochs", self.reg_epochs, low=0)
        check_range("method.params.warmup", self.warmup, low=0.0, high=1.0)
        check_range("method.params.ft_epochs", self.ft_epochs, low=0)
        if self.select not in ("uniform", "global"):
            raise SpecError(f"method.params.select = {self.select!r}; allowed: 'uniform', 'global'")


def _sub_layout(layout: CrossbarLayout, names) -> CrossbarLayout:
    return CrossbarLayout(layout.crossbar, {n: layout[n] for n in names})


def prunable_layers(layout: CrossbarLayout, p: StructuredParams) -> list[str]:
    return p.layer_selection.select(layout)


def regularizer(scheme: str, layout: CrossbarLayout, p: StructuredParams):
    """The scheme's group lasso (None when ``lam = 0``): tile columns (XCS), tile rows (XRS),
    or filters + input channels (C/F; classifier outputs and image inputs left out)."""
    if scheme not in SCHEMES:
        raise SpecError(f"scheme = {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if p.lam == 0:
        return None
    if scheme in GROUP_KIND:
        return GroupLasso(_sub_layout(layout, prunable_layers(layout, p)), GROUP_KIND[scheme],
                          p.lam, p.warmup)  # fmt: skip
    names = list(layout.layers)
    filt = GroupLasso(_sub_layout(layout, names[:-1] or names), "filter", p.lam, p.warmup)
    chan = GroupLasso(_sub_layout(layout, names[1:] or names), "channel", p.lam, p.warmup)
    return lambda model, progress=1.0: filt(model, progress) + chan(model, progress)


# ----------------------------------------------------------------------------- C/F selection
@dataclass
class _Channel:
    group: int
    index: int
    prod: list[tuple[str, list[int]]]
    cons: list[tuple[str, list[int]]]
    bns: list[tuple[nn.modules.batchnorm._BatchNorm, list[int]]]
    score: float


def _cf_channels(model: nn.Module, trace: Trace, mapped: set[str]) -> list[_Channel]:
    out = []
    for gi, g in enumerate(trace.groups):
        if g.terminal or not g.consumers or not g.producers:
            continue
        if any(m.name not in mapped for m in g.producers + g.consumers):
            continue
        for r in range(g.n):
            sq = n = 0.0
            prod, cons, bns = [], [], []
            for p in g.producers:
                idx = p.idx.get(r, [])
                w = p.module.weight.detach()[idx]
                sq += float(w.double().pow(2).sum())
                n += w.numel()
                prod.append((p.name, idx))
                bn = _bn_after(trace, p.module)
                if bn is not None:
                    bns.append((bn, idx))
            for c in g.consumers:
                idx = c.idx.get(r, [])
                w = c.module.weight.detach()[:, idx]
                sq += float(w.double().pow(2).sum())
                n += w.numel()
                cons.append((c.name, idx))
            out.append(_Channel(gi, r, prod, cons, bns, (sq / max(n, 1)) ** 0.5))
    return out


def _cf_keep_masks(model, chans: list[_Channel], pruned: list[_Channel], names) -> dict:
    mods = dict(model.named_modules())
    masks = {n: torch.ones_like(mods[n].weight, dtype=torch.bool) for n in names}
    for ch in pruned:
        for n, idx in ch.prod:
            masks[n][idx] = False
        for n, idx in ch.cons:
            masks[n][:, idx] = False
    return masks


def _cf_select(chans: list[_Channel], n_groups: int, frac: float, select: str) -> list[_Channel]:
    by_group: dict[int, list[_Channel]] = {}
    for c in chans:
        by_group.setdefault(c.group, []).append(c)
    if select == "global":
        scores = torch.tensor([c.score for c in chans], dtype=torch.float64)
        if not len(scores):
            return []
        thr = float(torch.quantile(scores, frac)) if frac > 0 else -1.0
        out = []
        for cs in by_group.values():
            low = [c for c in cs if c.score < thr]
            if len(low) >= len(cs):  # a group keeps its strongest channel
                low = sorted(cs, key=lambda c: c.score)[:-1]
            out += low
        return out
    out = []
    for cs in by_group.values():
        k = min(int(frac * len(cs)), len(cs) - 1)
        out += sorted(cs, key=lambda c: (c.score, c.index))[:k]
    return out


@torch.no_grad()
def cf_prune(
    model: nn.Module, layout: CrossbarLayout, example: Tensor, sparsity: float, select: str
) -> tuple[MaskSet, dict]:
    """Zero the weakest coupled channels (filters, input rows, BatchNorm scale/shift, biases)
    in place so that the mapped layers reach ``sparsity``; returns masks and a report."""
    check_range("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    names = list(layout.layers)
    trace = trace_channel_groups(model, example)
    chans = _cf_channels(model, trace, set(names))
    if not chans and sparsity > 0:
        raise CompressionError("C/F pruning found no prunable coupled channel in the model")
    mods = dict(model.named_modules())
    total = sum(mods[n].weight.numel() for n in names)

    def sparsity_of(frac: float) -> tuple[float, list[_Channel]]:
        pr = _cf_select(chans, len(trace.groups), frac, select)
        m = _cf_keep_masks(model, chans, pr, names)
        return 1.0 - sum(int(v.sum()) for v in m.values()) / total, pr

    lo, hi = 0.0, 1.0
    best = sparsity_of(0.0)
    if sparsity > 0:
        for _ in range(40):
            mid = (lo + hi) / 2
            s, pr = sparsity_of(mid)
            if s >= sparsity:
                hi, best = mid, (s, pr)
            else:
                lo = mid
        if best[0] < sparsity:
            best = sparsity_of(hi)
    s, pruned = best
    keep = _cf_keep_masks(model, chans, pruned, names)
    for n, m in keep.items():
        mods[n].weight.mul_(m.to(mods[n].weight.device))
    for ch in pruned:
        for n, idx in ch.prod:
            b = mods[n].bias
            if b is not None:
                b[idx] = 0
        for bn, idx in ch.bns:
            if bn.weight is not None:
                bn.weight[idx] = 0
                bn.bias[idx] = 0
    counts: dict[str, int] = {}
    for ch in pruned:
        root = trace.groups[ch.group].root
        counts[root] = counts.get(root, 0) + 1
    bn_zero = [(bn, idx) for ch in pruned for bn, idx in ch.bns]
    report = {
        "channels_pruned": counts,
        "channels_total": len(chans),
        "weight_sparsity": s,
        "_bn_zero": bn_zero,
    }
    return MaskSet(keep), report


def bn_keeper(bn_zero: list) -> Callable[[nn.Module], None]:
    """post_step hook keeping the BatchNorm scale/shift of pruned C/F channels at zero."""

    @torch.no_grad()
    def hook(model: nn.Module) -> None:
        for bn, idx in bn_zero:
            bn.weight[idx] = 0
            bn.bias[idx] = 0

    return hook


def remove_cf(model: nn.Module, example: Tensor, crossbar=None) -> tuple[nn.Module, dict]:
    """The physically smaller model of a C/F-pruned one (Torch-Pruning, on a copy)."""
    return remove_unused_paths(model, example, crossbar=crossbar)


# ----------------------------------------------------------------------------- common
def crossbar_counts(model: nn.Module, layout: CrossbarLayout, packed: CrossbarLayout) -> dict:
    mats = layer_matrices(model, packed)
    needed = sum(packed[n].tiles_needed(mats[n]) for n in packed.layers)
    dense = layout.dense_tiles
    return {"crossbars_dense": dense, "crossbars": needed, "ccr": dense / max(needed, 1)}


def example_batch(data, n: int = 32) -> Tensor:
    """A few inputs of a data set / loader (for tracing and calibration)."""
    from torch.utils.data import DataLoader

    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=n)
    x = next(iter(loader))[0]
    return x[:n]


def structured_prune(ctx: CompressContext, scheme: str, p: StructuredParams) -> CompressResult:
    """Group-lasso training, thresholding, optional masked fine-tuning and packing."""
    if scheme not in SCHEMES:
        raise SpecError(f"scheme = {scheme!r}; allowed: {', '.join(SCHEMES)}")
    reg = regularizer(scheme, ctx.layout, p)
    if reg is not None and p.reg_epochs > 0:
        ctx.log(f"  {scheme}: group lasso (lam={p.lam:g}) for {p.reg_epochs} epoch(s)")
        ctx.finetune(None, p.reg_epochs, regularizer=reg, tag=f"{scheme}_lasso")
    info: dict = {"scheme": scheme, "sparsity_target": p.sparsity, "lam": p.lam}
    post = None
    if scheme == "cf":
        x = example_batch(ctx.train_data).to(ctx.device)
        masks, rep = cf_prune(ctx.model, ctx.layout, x, p.sparsity, p.select)
        post = bn_keeper(rep.pop("_bn_zero"))
        info.update(rep)
    else:
        names = prunable_layers(ctx.layout, p)
        new = magnitude_masks(
            ctx.model,
            ctx.layout,
            sparsity=p.sparsity,
            kind=GROUP_KIND[scheme],
            scope=p.select,
            prunable=names,
        )
        masks = MaskSet.from_model(ctx.model, list(ctx.layout.layers)).combine(new)
        masks.apply(ctx.model)
        info["pruned_layers"] = names
    if p.ft_epochs > 0:
        ctx.finetune(masks, p.ft_epochs, tag=f"{scheme}_ft", post_step=post)
    info["weight_sparsity"] = weight_sparsity(ctx.model, ctx.layout)
    small = None
    if p.physical:
        if scheme != "cf":
            raise SpecError(
                f"method.physical = true is for 'cf' (it removes whole channels/filters); "
                f"'{scheme}' prunes tile columns/rows, which packing frees instead"
            )
        small, small_layout, masks, rep = shrink(
            ctx.model, ctx.layout, example_batch(ctx.train_data).to(ctx.device)
        )
        info["unused_path_removal"] = rep
        packed = pack_layout(small_layout, small, PACK_KIND[scheme]) if p.pack else small_layout
        info.update(crossbar_counts(small, ctx.layout, packed))
        info["physical"] = True
        ctx.log(
            f"  cf: physically removed, {rep['weights_before']} -> {rep['weights_after']} weights"
        )
        return CompressResult(masks=masks, layout=packed, info=plain_info(info), model=small)
    packed = pack_layout(ctx.layout, ctx.model, PACK_KIND[scheme]) if p.pack else ctx.layout
    info.update(crossbar_counts(ctx.model, ctx.layout, packed))
    ctx.log(
        f"  {scheme}: weight sparsity {info['weight_sparsity']:.3f}, crossbars "
        f"{info['crossbars_dense']} -> {info['crossbars']} (CCR {info['ccr']:.2f})"
    )
    return CompressResult(masks=masks, layout=packed if p.pack else None, info=plain_info(info))


@register
class CFPruning(Method[StructuredParams]):
    name = "cf"
    summary = "C/F pruning: group lasso + threshold on coupled input channels / filters, packed"
    Params = StructuredParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        return structured_prune(ctx, "cf", self.params)


@register
class XCSPruning(Method[StructuredParams]):
    name = "xcs"
    summary = "crossbar-column sparsity: group lasso + threshold on tile columns, packed"
    Params = StructuredParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        return structured_prune(ctx, "xcs", self.params)


@register
class XRSPruning(Method[StructuredParams]):
    name = "xrs"
    summary = "crossbar-row sparsity: group lasso + threshold on tile rows, packed"
    Params = StructuredParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        return structured_prune(ctx, "xrs", self.params)
