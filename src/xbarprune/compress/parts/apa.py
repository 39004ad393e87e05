"""Adaptive Pruning Algorithm (APA) of PRUNIX (Alshaarawy et al., ISCAS 2022).

Reconstruction of shared/papers/prunix.md §2.3 ([inference]: only the abstract is public:
"minimise accuracy loss by considering the sensitivity of different layers of a CNN to
pruning"). Per round r = 1..R (cubic targets ``S_r = S (1 - (1 - r/R)^3)``):

1. **sensitivity**: for each prunable layer l and each grid sparsity s >= its current sparsity,
   prune only layer l to s (lowest-RMS groups), measure the validation accuracy and record the
   drop ``D_l(s) = A_ref - A_l(s)`` (through the analog simulator with non-idealities when
   configured: mean over K Monte Carlo trials). Curves are made monotone (running max) and
   interpolated linearly between grid points.
2. **allocation** (:func:`allocate`): choose ``s_l >= s_l^(r-1)`` minimising ``sum_l D_l(s_l)``
   subject to ``sum_l n_l s_l / sum_l n_l >= S_r`` by greedy water-filling in steps of
   ``step`` (default 0.01): repeatedly advance the layer with the smallest predicted drop per
   pruned weight. Each step adds at most ``step`` to the overall sparsity, so the target is met
   within ``step`` (1 %). Layers are capped at ``s_max`` (and keep at least one group);
   an unreachable target returns the capped maximum with ``reached = False``.
3. **prune and fine-tune**: apply the masks (they only grow), fine-tune with the masks fixed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from xbarprune.compress.parts.pruning import layer_group_mask
from xbarprune.errors import CompressionError, check_range
from xbarprune.mapping.layout import CrossbarLayout
from xbarprune.mapping.matrix import matrix_to_weight, weight_to_matrix
from xbarprune.training.masks import MaskSet

DEFAULT_GRID = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass
class Allocation:
    sparsity: dict[str, float]
    overall: float
    target: float
    reached: bool
    predicted_drop: float = 0.0
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "sparsity": self.sparsity,
            "overall": self.overall,
            "target": self.target,
            "reached": self.reached,
            "predicted_drop": self.predicted_drop,
        }


def _curve(points: Sequence[tuple[float, float]]) -> Callable[[float], float]:
    """Monotone (running max) piecewise-linear drop curve through (s, D) points; D(s)=D_last
    beyond the last point, linear from (s_0, D_0) towards s=0 with D=0."""
    pts = sorted(points)
    xs = [p[0] for p in pts]
    ys = []
    m = 0.0
    for _, d in pts:
        m = max(m, d)
        ys.append(m)

    def f(s: float) -> float:
        if not xs:
            return 0.0
        if s <= xs[0]:
            return ys[0] * (s / xs[0]) if xs[0] > 0 else ys[0]
        for i in range(1, len(xs)):
            if s <= xs[i]:
                t = (s - xs[i - 1]) / (xs[i] - xs[i - 1])
                return ys[i - 1] + t * (ys[i] - ys[i - 1])
        # extrapolate with the last slope (pessimistic): keeps unmeasured territory costly
        if len(xs) >= 2 and xs[-1] > xs[-2]:
            slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
        else:
            slope = 0.0
        return ys[-1] + slope * (s - xs[-1])

    return f


def allocate(
    sensitivity: Mapping[str, Sequence[tuple[float, float]]],
    n_params: Mapping[str, int],
    target: float,
    *,
    current: Mapping[str, float] | None = None,
    s_max: float | Mapping[str, float] = 0.95,
    step: float = 0.01,
) -> Allocation:
    """Per-layer sparsities reaching ``target`` overall with the least predicted drop."""
    check_range("apa.target", target, low=0.0, high=1.0, high_open=True)
    check_range("apa.step", step, low=0.0, low_open=True, high=0.5)
    names = list(n_params)
    missing = [n for n in names if n not in sensitivity]
    if missing:
        raise CompressionError(f"APA: no sensitivity curve for layer(s) {', '.join(missing)}")
    cur = {n: float((current or {}).get(n, 0.0)) for n in names}
    cap = {n: float(s_max[n] if isinstance(s_max, Mapping) else s_max) for n in names}
    curves = {n: _curve(sensitivity[n]) for n in names}
    total = float(sum(n_params.values()))
    s = {n: min(cur[n], max(cap[n], cur[n])) for n in names}

    def overall() -> float:
        return sum(n_params[n] * s[n] for n in names) / total

    heap: list[tuple[float, float, int, str]] = []

    def push(i: int, n: str) -> None:
        if s[n] + 1e-12 >= cap[n]:
            return
        nxt = min(s[n] + step, cap[n])
        cost = (curves[n](nxt) - curves[n](s[n])) / (n_params[n] * (nxt - s[n]))
        # ties (equal marginal cost) go to the least pruned layer, then by order
        heapq.heappush(heap, (round(cost, 12), s[n], i, n))

    for i, n in enumerate(names):
        push(i, n)
    while overall() < target - 1e-12 and heap:
        _, _, i, n = heapq.heappop(heap)
        s[n] = min(s[n] + step, cap[n])
        push(i, n)
    reached = overall() >= target - 1e-9
    drop = sum(curves[n](s[n]) for n in names)
    return Allocation(
        sparsity={n: round(s[n], 6) for n in names},
        overall=overall(),
        target=target,
        reached=reached,
        predicted_drop=drop,
    )


def layer_sparsity(model: nn.Module, names: Sequence[str]) -> dict[str, float]:
    mods = dict(model.named_modules())
    return {n: float((mods[n].weight.detach() == 0).float().mean()) for n in names}


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    layout: CrossbarLayout,
    names: Sequence[str],
    kind: str,
    grid: Sequence[float],
    score: Callable[[nn.Module], float],
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[float, dict[str, list[tuple[float, float]]]]:
    """Reference score and drop curves ``D_l(s)`` (one layer pruned at a time, restored after).

    Grid points below a layer's current sparsity are skipped; the current sparsity itself is a
    point with drop 0.
    """
    mods = dict(model.named_modules())
    ref = score(model)
    curves: dict[str, list[tuple[float, float]]] = {}
    for n in names:
        w = mods[n].weight
        saved = w.detach().clone()
        cur = float((saved == 0).float().mean())
        pts = [(cur, 0.0)]
        for s in grid:
            if s <= cur + 1e-9:
                continue
            mat = weight_to_matrix(saved).cpu()
            mask = layer_group_mask(mat, layout[n].groups(kind), s)
            w.copy_(saved * matrix_to_weight(mask, layout[n].weight_shape).to(w.device))
            pts.append((s, ref - score(model)))
            w.copy_(saved)
        curves[n] = pts
        if log:
            log(f"    sensitivity {n}: " + ", ".join(f"{s:.2f}:{100 * d:+.1f}" for s, d in pts))
    return ref, curves


def prune_to(
    model: nn.Module,
    layout: CrossbarLayout,
    sparsity: Mapping[str, float],
    kind: str,
    masks: MaskSet,
) -> MaskSet:
    """Extend ``masks`` so each layer reaches its sparsity by dropping lowest-RMS groups."""
    mods = dict(model.named_modules())
    out = MaskSet(dict(masks.items()))
    for n, s in sparsity.items():
        w = mods[n].weight.detach()
        mat = weight_to_matrix(w).cpu()
        m = layer_group_mask(mat, layout[n].groups(kind), s)
        new = matrix_to_weight(m, layout[n].weight_shape)
        out[n] = (out[n].cpu() & new) if n in out.masks else new
    out.apply(model)
    return out
