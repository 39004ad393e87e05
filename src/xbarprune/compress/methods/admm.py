"""ADMM structured pruning + memristor quantisation (Ma, Yuan et al., "Tiny but Accurate",
ASP-DAC 2020, arXiv 1908.10017; details from Yuan, Ma et al., ISLPED 2019, arXiv 1908.11691).

Problem (eq. 1): minimise the loss subject to ``W_i ∈ P_i`` (at most α_i non-zero structured
groups) and ``W_i ∈ Q_i`` (the memristor level set, :mod:`.quantize`). With auxiliaries Y_i
(structure) and Z_i (levels) and scaled duals U_i, V_i, iteration k (eqs. 5-7):

    W   <- SGD/Adam epochs on  loss + Σ_i ρ/2 ||W_i - Y_i + U_i||² + ρ/2 ||W_i - Z_i + V_i||²
    Y_i <- Π_P(W_i + U_i)            keep the α_i groups of largest L2 norm
    Z_i <- Π_Q(W_i + V_i | supp Y_i) nearest non-zero level on Y's support, 0 elsewhere
    U_i <- U_i + W_i - Y_i ;  V_i <- V_i + W_i - Z_i
    ρ   <- min(ρ · growth, ρ_max)    (U, V rescaled by ρ_old/ρ_new: scaled-form ADMM, Boyd
                                      et al. 2011, §3.4.1)

The W-step is the package's training loop with :class:`ADMMRegularizer` as its regulariser.
Then the hard projection ("masked mapping") W <- Π_P(W), masked retraining, Network
Purification + unused-path masking (:mod:`.purification`), and distillation quantisation
(:func:`.quantize.distill_quantize`, Algorithm 2) with the levels enforced by a
straight-through estimator and a final hard projection onto Q.

Group kinds (on the mapped matrix W (R x C), rows = in_channels·kh·kw, columns = filters):
``filter`` (a column: one filter), ``channel`` (the kh·kw rows of one input channel),
``shape`` (one row: one (channel, kernel position) across all filters — the paper's
"filter-shape"/"column" sparsity of its n x k GEMM matrix, which is our matrix transposed),
the crossbar groups ``tile``, ``tile_column``, ``tile_row``, and ``weight`` (irregular).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from xbarprune.compress.base import CompressContext, CompressResult, Method, plain_info, register
from xbarprune.compress.parts.importance import L2, RMS
from xbarprune.compress.parts.purification import (
    network_purification,
    remove_unused_paths,
    shrink,
)
from xbarprune.compress.parts.quantize import (
    LevelSet,
    distill_quantize,
    layer_scale,
    memristor_levels,
    project_levels,
)
from xbarprune.compress.selection import LayerSelection, unknown_names
from xbarprune.errors import CompressionError, SpecError, check_range
from xbarprune.hardware.presets import hardware_preset
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.io import save_checkpoint
from xbarprune.mapping.layout import CrossbarLayout, Groups, LayerLayout
from xbarprune.mapping.matrix import matrix_to_weight, weight_to_matrix
from xbarprune.mapping.permute import compact, pack_columns, pack_rows
from xbarprune.training.masks import MaskSet

ADMM_KINDS: tuple[str, ...] = (
    "filter",
    "channel",
    "shape",
    "tile",
    "tile_column",
    "tile_row",
    "weight",
)

#: The paper's device: passive 1R cells, R_on = 1 MΩ, R_off = 10 MΩ, 4-bit (16 levels).
MA2020_DEVICE = hardware_preset("ma2020").device


def ma2020_crossbar(lenet: bool = False, cells_per_weight: int = 2) -> CrossbarSpec:
    """The paper's crossbar: 128 x 64 (32 x 32 for LeNet-5/ConvNet in ISLPED 2019), 8-bit
    weights as two 4-bit cells, signs on separate (positive/negative) arrays — our differential
    encoding, which counts the positive and negative cells of a weight in one tile.
    The hardware presets ``ma2020`` / ``ma2020-lenet`` (``hardware: ...`` in a config)."""
    x = hardware_preset("ma2020-lenet" if lenet else "ma2020").crossbar
    return replace(x, cells_per_weight=cells_per_weight)


# ----------------------------------------------------------------------------- projections
def layer_groups(layer: LayerLayout, kind: str) -> Groups:
    """Groups of ``kind`` of one layer; ``shape`` = one mapped-matrix row (all filters)."""
    if kind == "shape":
        R, C = layer.matrix_shape
        idx = torch.arange(R * C).view(R, C)
        return Groups("shape", idx, torch.full((R,), C, dtype=torch.long), R * C)
    if kind not in ADMM_KINDS:
        raise SpecError(f"group kind {kind!r}; allowed: {', '.join(ADMM_KINDS)}")
    return layer.groups(kind)


def project_structure(
    mat: Tensor, groups: Groups, alpha: int, *, layer: str = "?"
) -> tuple[Tensor, Tensor]:
    """Euclidean projection onto P = {at most α non-zero groups}: keep the α groups of largest
    L2 norm (ties: lower group index first), zero the rest. Returns (projected, keep mask (R, C)).

    Weights outside every group are kept. ``α`` must be in [1, number of groups].
    """
    G = len(groups)
    if int(alpha) != alpha or alpha < 1 or alpha > G:
        raise CompressionError(
            f"layer '{layer}': group budget α = {alpha!r} is outside [1, {G}] "
            f"({G} '{groups.kind}' groups in the layer)"
        )
    norms = L2(mat.detach(), groups)
    order = torch.argsort(-norms, stable=True)
    keep = torch.zeros(G, dtype=torch.bool, device=norms.device)
    keep[order[: int(alpha)]] = True
    mask = groups.weight_mask(keep.cpu(), tuple(mat.shape)).to(mat.device)
    return mat * mask, mask


def project_all(
    mat: Tensor, constraints: list[tuple[Groups, int]], *, layer: str = "?", rounds: int = 3
) -> Tensor:
    """Keep mask (R, C) of the hard projection onto the intersection of ``constraints``.

    One constraint: :func:`project_structure`. Several: alternating projections (each chooses
    its groups on the weights the others keep), ``rounds`` passes or until stable: a heuristic,
    since the exact projection onto e.g. "α rows and β columns" is a maximum-weight
    biclique-type problem.
    """
    masks = [project_structure(mat, g, a, layer=layer)[1] for g, a in constraints]
    if len(masks) == 1:
        return masks[0]
    for _ in range(rounds):
        changed = False
        for j, (g, a) in enumerate(constraints):
            others = torch.ones_like(masks[j])
            for i, m in enumerate(masks):
                if i != j:
                    others = others * m
            new = project_structure(mat * others, g, a, layer=layer)[1]
            changed |= not torch.equal(new, masks[j])
            masks[j] = new
        if not changed:
            break
    out = masks[0]
    for m in masks[1:]:
        out = out * m
    return out


# ----------------------------------------------------------------------------- ADMM state
_K = TypeVar("_K")


def _to_device(d: dict[_K, Tensor], device: torch.device) -> None:
    """Move the tensors of ``d`` to ``device`` in place (those already there stay)."""
    for n, t in d.items():
        if t.device != device:
            d[n] = t.to(device)


class ADMMRegularizer:
    """ADMM state of the constrained layers and the W-step penalty (a training-loop
    regulariser ``reg(model, progress) -> Tensor``)::

        Σ_i ρ/2 ||W_i - Y_i + U_i||² + ρ/2 ||W_i - Z_i + V_i||²

    ``structure``: layer -> (groups, α) for the P constraint, or a list of them: several
    structured constraints on one layer (e.g. at most α filter shapes *and* at most β filters,
    StructADMM's combined sparsity, Zhang et al. 2018), each with its own auxiliary Y and dual
    U, so that every projection stays exact and the layer converges to the intersection;
    ``level_sets``: layer -> LevelSet for the Q constraint (Z's support is the intersection of
    the Y supports where both apply). All tensors are kept in weight shape, on the weights'
    device.
    """

    def __init__(
        self,
        model: nn.Module,
        structure: Mapping[str, tuple[Groups, int] | list[tuple[Groups, int]]],
        level_sets: dict[str, LevelSet],
        *,
        rho: float = 1e-3,
        rho_growth: float = 1.0,
        rho_max: float = math.inf,
    ):
        check_range("rho", rho, low=0.0, low_open=True)
        check_range("rho_growth", rho_growth, low=1.0)
        self.structure = {n: [v] if isinstance(v, tuple) else list(v) for n, v in structure.items()}
        self.level_sets = dict(level_sets)
        self.rho = float(rho)
        self.rho_growth = float(rho_growth)
        self.rho_max = float(rho_max)
        self.mods = {
            n: m for n, m in model.named_modules() if n in self.structure or n in self.level_sets
        }
        missing = [n for n in [*self.structure, *self.level_sets] if n not in self.mods]
        if missing:
            raise CompressionError(f"no layer(s) {', '.join(missing)} in the model")
        # Y[(n, j)], U[(n, j)]: auxiliary and dual of constraint j of layer n
        self.Y: dict[tuple[str, int], Tensor] = {}
        self.Z: dict[str, Tensor] = {}
        self.U: dict[tuple[str, int], Tensor] = {}
        self.V: dict[str, Tensor] = {}
        self.history: list[dict] = []
        with torch.no_grad():
            for n, cons in self.structure.items():
                for j in range(len(cons)):
                    self.U[(n, j)] = torch.zeros_like(self.mods[n].weight)
            for n in self.level_sets:
                self.V[n] = torch.zeros_like(self.mods[n].weight)
            self._project()

    @torch.no_grad()
    def _project(self) -> None:
        """Y, Z <- projections of W + U, W + V (eq. 6)."""
        for n, cons in self.structure.items():
            w = self.mods[n].weight
            for j, (groups, alpha) in enumerate(cons):
                a = w + self.U[(n, j)]
                y, _ = project_structure(weight_to_matrix(a), groups, alpha, layer=n)
                self.Y[(n, j)] = matrix_to_weight(y, tuple(w.shape)).contiguous()
        for n, ls in self.level_sets.items():
            w = self.mods[n].weight
            a = w + self.V[n]
            support = torch.ones_like(w, dtype=torch.bool)
            for j in range(len(self.structure.get(n, ()))):
                support &= self.Y[(n, j)] != 0
            self.Z[n] = project_levels(a, ls, support, layer=n)

    def _follow_device(self, device: torch.device) -> None:
        _to_device(self.Y, device)
        _to_device(self.Z, device)
        _to_device(self.U, device)
        _to_device(self.V, device)

    def __call__(self, model: nn.Module | None = None, progress: float = 0.0) -> Tensor:
        total = None
        for n in self.mods:
            w = self.mods[n].weight
            self._follow_device(w.device)
            t = w.new_zeros(())
            for j in range(len(self.structure.get(n, ()))):
                t = t + (w - self.Y[(n, j)] + self.U[(n, j)]).pow(2).sum()
            if n in self.Z:
                t = t + (w - self.Z[n] + self.V[n]).pow(2).sum()
            total = t if total is None else total + t
        if total is None:
            return torch.zeros(())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self) -> dict:
        """Projection and dual steps (eqs. 6-7) from the current weights, then ρ growth.
        Returns the relative primal residuals ||W - Y|| / ||W|| and ||W - Z|| / ||W||."""
        for w in (m.weight for m in self.mods.values()):
            self._follow_device(w.device)
        self._project()
        rec: dict = {"rho": self.rho, "structure_residual": {}, "level_residual": {}}
        for n, cons in self.structure.items():
            w = self.mods[n].weight
            worst = 0.0
            for j in range(len(cons)):
                self.U[(n, j)] += w - self.Y[(n, j)]
                r = float((w - self.Y[(n, j)]).norm() / w.norm().clamp_min(1e-12))
                worst = max(worst, r)
            rec["structure_residual"][n] = worst
        for n in self.level_sets:
            w = self.mods[n].weight
            self.V[n] += w - self.Z[n]
            rec["level_residual"][n] = float((w - self.Z[n]).norm() / w.norm().clamp_min(1e-12))
        new_rho = min(self.rho * self.rho_growth, self.rho_max)
        if new_rho != self.rho:
            scale = self.rho / new_rho
            for key in self.U:
                self.U[key] *= scale
            for n in self.V:
                self.V[n] *= scale
            self.rho = new_rho
        self.history.append(rec)
        return rec


# ----------------------------------------------------------------------------- params
@dataclass(frozen=True)
class ADMMParams:
    """Config of ``method: {name: admm, params: ...}``.

    Targets (first match wins per layer): ``alpha`` (kept group count), ``keep`` (kept
    fraction of groups), else the global ``compression`` (prunable weights / kept weights)
    allocated ``uniform`` (every layer keeps 1/compression of its groups) or ``global`` (the
    largest-RMS groups of the dense model over all prunable layers, at least one per layer).

    ``combine_kind`` / ``combine_alpha`` (same layer names): a second structured constraint
    on a layer, e.g. ``{conv2: filter}`` / ``{conv2: 17}`` with ``layer_kinds: {conv2: shape}``
    keeps a submatrix of α shapes x 17 filters (ours; the papers prune one kind per layer).
    """

    kind: str = "filter"
    layer_kinds: dict[str, str] = field(default_factory=dict)
    layers: Literal["conv", "all"] = "conv"
    exclude: tuple[str, ...] = field(default_factory=tuple)
    compression: float = 10.0
    allocation: Literal["uniform", "global"] = "uniform"
    keep: dict[str, float] = field(default_factory=dict)
    alpha: dict[str, int] = field(default_factory=dict)
    combine_kind: dict[str, str] = field(default_factory=dict)
    combine_alpha: dict[str, int] = field(default_factory=dict)
    # ADMM schedule (the paper gives none; see docs/methods/admm.md)
    rho: float = 0.03
    rho_growth: float = 3.0
    rho_max: float = 3.0
    iterations: int = 6
    epochs_per_iteration: int = 1
    admm_quant: bool = True
    retrain_epochs: int = 2
    # Network Purification + unused path masking
    prm: bool = True
    th1: float = 0.01
    th2: float = 0.5
    th3: float = 0.05
    th4: float = 0.01
    prm_retrain_epochs: int = 0
    # quantisation (levels from the device and crossbar unless bits is given)
    quantize: bool = True
    bits: int | None = None
    level_mode: Literal["uniform", "conductance"] = "uniform"
    quant_epochs: int = 1
    distill_sigma: float = 0.5
    distill_temperature: float = 4.0
    # result
    pack: bool = True
    upr_report: bool = True
    #: remove unused filters/channels physically (Torch-Pruning); the run stores the shrunk
    #: architecture and every later stage works on the smaller network
    physical: bool = False

    @property
    def layer_selection(self) -> LayerSelection:
        """The layers this method prunes (:mod:`xbarprune.compress.selection`)."""
        return LayerSelection(
            exclude=tuple(self.exclude), kinds=None if self.layers == "all" else ("conv",)
        )

    def __post_init__(self) -> None:
        p = "method.params"
        for k in (self.kind, *self.layer_kinds.values(), *self.combine_kind.values()):
            if k not in ADMM_KINDS:
                raise SpecError(f"{p}.kind = {k!r}; allowed: {', '.join(ADMM_KINDS)}")
        if set(self.combine_kind) != set(self.combine_alpha):
            raise SpecError(
                f"{p}.combine_kind and {p}.combine_alpha must name the same layers "
                f"(got {sorted(self.combine_kind)} and {sorted(self.combine_alpha)})"
            )
        for n, a in self.combine_alpha.items():
            check_range(f"{p}.combine_alpha.{n}", a, low=1)
        if self.layers not in ("conv", "all"):
            raise SpecError(f"{p}.layers = {self.layers!r}; allowed: 'conv', 'all'")
        if self.allocation not in ("uniform", "global"):
            raise SpecError(f"{p}.allocation = {self.allocation!r}; allowed: 'uniform', 'global'")
        if self.level_mode not in ("uniform", "conductance"):
            raise SpecError(f"{p}.level_mode = {self.level_mode!r}; allowed: uniform, conductance")
        check_range(f"{p}.compression", self.compression, low=1.0)
        for n, f in self.keep.items():
            check_range(f"{p}.keep.{n}", f, low=0.0, low_open=True, high=1.0)
        for n, a in self.alpha.items():
            check_range(f"{p}.alpha.{n}", a, low=1)
        check_range(f"{p}.rho", self.rho, low=0.0, low_open=True)
        check_range(f"{p}.rho_growth", self.rho_growth, low=1.0)
        check_range(f"{p}.rho_max", self.rho_max, low=self.rho)
        check_range(f"{p}.iterations", self.iterations, low=0)
        for name in (
            "epochs_per_iteration",
            "retrain_epochs",
            "prm_retrain_epochs",
            "quant_epochs",
        ):
            check_range(f"{p}.{name}", getattr(self, name), low=0)
        for name in ("th1", "th3", "th4"):
            check_range(f"{p}.{name}", getattr(self, name), low=0.0)
        check_range(f"{p}.th2", self.th2, low=0.0, high=1.0)
        if self.bits is not None:
            check_range(f"{p}.bits", self.bits, low=1, high=16)
        check_range(f"{p}.distill_sigma", self.distill_sigma, low=0.0, high=1.0)
        check_range(f"{p}.distill_temperature", self.distill_temperature, low=0.0, low_open=True)


# ----------------------------------------------------------------------------- helpers
def prunable_layers(layout: CrossbarLayout, p: ADMMParams) -> list[str]:
    named = (*p.keep, *p.alpha, *p.layer_kinds, *p.combine_kind)
    unknown = unknown_names(p.exclude, layout.layers) + [n for n in named if n not in layout.layers]
    if unknown:
        raise CompressionError(
            f"method.params names unknown layer(s): {', '.join(sorted(set(unknown)))}; "
            f"mapped layers: {', '.join(layout.layers)}"
        )
    return p.layer_selection.select(layout)


def allocate_alpha(
    model: nn.Module, layout: CrossbarLayout, names: list[str], kinds: dict[str, str], p: ADMMParams
) -> dict[str, int]:
    """Group budget α per prunable layer (see :class:`ADMMParams`)."""
    from xbarprune.mapping.layout import layer_matrices

    mats = layer_matrices(model, layout)
    groups = {n: layer_groups(layout[n], kinds[n]) for n in names}
    alpha: dict[str, int] = {}
    free = []
    for n in names:
        G = len(groups[n])
        if n in p.alpha:
            a = int(p.alpha[n])
            if a > G:
                raise CompressionError(
                    f"layer '{n}': group budget α = {a} is larger than its {G} '{kinds[n]}' groups"
                )
            alpha[n] = a
        elif n in p.keep:
            alpha[n] = max(1, round(p.keep[n] * G))
        elif p.allocation == "uniform":
            alpha[n] = max(1, min(G, round(G / p.compression)))
        else:
            free.append(n)
    if free:
        scores = torch.cat([RMS(mats[n], groups[n]) for n in free])
        sizes = torch.cat([groups[n].sizes for n in free])
        owner = torch.cat([torch.full((len(groups[n]),), i) for i, n in enumerate(free)])
        budget = sum(mats[n].numel() for n in free) / p.compression
        order = torch.argsort(-scores, stable=True)
        cum = torch.cumsum(sizes[order].double(), 0)
        kept = order[cum <= budget]
        for i, n in enumerate(free):
            alpha[n] = max(1, int((owner[kept] == i).sum()))
    return alpha


def compression_stats(model: nn.Module, layout: CrossbarLayout) -> dict:
    """Weights / non-zero weights over the conv layers and over all mapped layers."""
    from xbarprune.mapping.layout import layer_matrices

    mats = layer_matrices(model, layout)
    conv = [n for n, lay in layout.layers.items() if lay.kind == "conv"]
    cw = sum(mats[n].numel() for n in conv)
    cnz = sum(int((mats[n] != 0).sum()) for n in conv)
    tw = sum(m.numel() for m in mats.values())
    tnz = sum(int((m != 0).sum()) for m in mats.values())
    return {
        "conv_weights": cw,
        "conv_nonzero": cnz,
        "compression_conv": cw / max(cnz, 1),
        "weights": tw,
        "nonzero": tnz,
        "compression_total": tw / max(tnz, 1),
    }


def best_packed_layout(model: nn.Module, layout: CrossbarLayout) -> CrossbarLayout:
    """Per layer the packing with the fewest tiles among: dropping all-zero rows and columns
    (the paper's shrunk dense block), column-grain and row-grain packing."""
    from xbarprune.mapping.layout import layer_matrices

    mats = layer_matrices(model, layout)
    out = {}
    for n, lay in layout.layers.items():
        cands = [compact(lay, mats[n]), pack_columns(lay, mats[n]), pack_rows(lay, mats[n])]
        out[n] = min(cands, key=lambda c: c.n_tiles)
    return CrossbarLayout(layout.crossbar, out)


def example_batch(data, n: int = 2, device: torch.device | str = "cpu") -> Tensor:
    """A few inputs of a data set / loader (for tracing and constant folding)."""
    if isinstance(data, DataLoader):
        x = next(iter(data))[0][:n]
    else:
        x = torch.stack([data[i][0] for i in range(min(n, len(data)))])
    return x.to(device)


def level_sets_for(
    layout: CrossbarLayout, device: DeviceSpec, p: ADMMParams
) -> dict[str, LevelSet]:
    k = layout.crossbar.cells_per_weight
    return {
        n: memristor_levels(device, k, bits=p.bits, mode=p.level_mode, layer=n)
        for n in layout.layers
    }


# ----------------------------------------------------------------------------- the method
def run_admm(
    ctx: CompressContext,
    p: ADMMParams,
    on_stage: Callable[[str, nn.Module, MaskSet], None] | None = None,
) -> CompressResult:
    """The whole method on ``ctx.model`` (in place).

    ``on_stage(tag, model, masks)`` is called after each step's result is final
    (``"admm"``, ``"admm+prm"``, ``"admm+prm+quant"`` or ``"admm+quant"``), e.g. to
    evaluate or save the intermediate models (the reproduction does).
    """
    st = _setup(ctx, p)
    _admm_phase(ctx, p, st)
    _mask_and_retrain(ctx, p, st)
    if on_stage is not None:
        on_stage("admm", st.model, st.masks)
    example = example_batch(ctx.train_data, 2, ctx.device)
    if p.prm:
        _purify(ctx, p, st, example)
        if on_stage is not None:
            on_stage("admm+prm", st.model, st.masks)
    if p.quantize:
        tag = _quantize(ctx, p, st)
        if on_stage is not None:
            on_stage(tag, st.model, st.masks)
    return _result(p, st, example)


@dataclass
class _ADMMState:
    """What the phases of :func:`run_admm` share: the constraints of each pruned layer,
    the level sets, the current masks, and the info / validation-accuracy / compression
    records they fill in."""

    model: nn.Module
    layout: CrossbarLayout
    names: list[str]
    cons: dict[str, list[tuple[Groups, int]]]
    level_sets: dict[str, LevelSet]
    teacher: nn.Module | None
    info: dict
    acc: dict[str, float]
    stats: dict[str, dict]
    masks: MaskSet = field(default_factory=MaskSet)


def _setup(ctx: CompressContext, p: ADMMParams) -> _ADMMState:
    """The pruned layers, their α (Sec. 3.1 allocation), every structured constraint
    (the main ``kind`` plus ``combine_kind``) and the memristor level sets."""
    model, layout = ctx.model, ctx.layout
    names = prunable_layers(layout, p)
    if not names:
        raise CompressionError("no prunable layer (method.params.layers / exclude leave none)")
    kinds = {n: p.layer_kinds.get(n, p.kind) for n in names}
    alpha = allocate_alpha(model, layout, names, kinds, p)
    groups = {n: layer_groups(layout[n], kinds[n]) for n in names}
    # every structured constraint of each layer: (groups, α), the second from combine_*
    cons: dict[str, list[tuple[Groups, int]]] = {n: [(groups[n], alpha[n])] for n in names}
    for n, k in p.combine_kind.items():
        if n not in cons:
            raise CompressionError(f"method.params.combine_kind names '{n}', which is not pruned")
        g2 = layer_groups(layout[n], k)
        if p.combine_alpha[n] > len(g2):
            raise CompressionError(
                f"layer '{n}': combine_alpha = {p.combine_alpha[n]} is larger than its "
                f"{len(g2)} '{k}' groups"
            )
        cons[n].append((g2, int(p.combine_alpha[n])))
    level_sets = level_sets_for(layout, ctx.device_spec, p) if p.quantize else {}
    teacher = copy.deepcopy(model).eval() if p.quantize and p.distill_sigma > 0 else None
    info: dict = {
        "kinds": kinds,
        "alpha": alpha,
        "combine": {n: [k, p.combine_alpha[n]] for n, k in p.combine_kind.items()},
        "groups": {n: len(g) for n, g in groups.items()},
        "levels": {n: ls.to_dict() for n, ls in level_sets.items()},
        # True when the level set is exactly the grid the crossbar encoding represents
        "levels_match_crossbar": all(
            ls.mode == "uniform"
            and ls.codes == ctx.device_spec.levels**layout.crossbar.cells_per_weight
            for ls in level_sets.values()
        ),
    }
    acc = {"dense": ctx.val_accuracy()}
    stats = {"dense": compression_stats(model, layout)}
    ctx.log(f"  ADMM: {len(names)} layers, α = {alpha}")
    return _ADMMState(model, layout, names, cons, level_sets, teacher, info, acc, stats)


def _admm_phase(ctx: CompressContext, p: ADMMParams, st: _ADMMState) -> None:
    """ADMM (eqs. 5-7): W-steps are training epochs with the augmented-Lagrangian regulariser;
    after each, the Y/Z updates (projection onto the constraint sets, dual ascent, ρ growth)."""
    reg = ADMMRegularizer(
        st.model,
        st.cons,
        st.level_sets if p.admm_quant else {},
        rho=p.rho,
        rho_growth=p.rho_growth,
        rho_max=p.rho_max,
    )
    for k in range(p.iterations):
        ctx.finetune(None, p.epochs_per_iteration, regularizer=reg, tag=f"admm_iter{k + 1}")
        rec = reg.update()
        worst = max(rec["structure_residual"].values(), default=0.0)
        ctx.log(
            f"  ADMM iteration {k + 1}/{p.iterations}: ρ {rec['rho']:.3g}, "
            f"max ||W-Y||/||W|| {worst:.3g}"
        )
    st.info["admm_history"] = reg.history


def _mask_and_retrain(ctx: CompressContext, p: ADMMParams, st: _ADMMState) -> None:
    """Masked mapping: the hard projection onto P fixes the masks, then masked retraining."""
    model, layout = st.model, st.layout
    st.masks = MaskSet.from_model(model, list(layout.layers))
    mods = dict(model.named_modules())
    with torch.no_grad():
        for n in st.names:
            w = mods[n].weight
            m = project_all(weight_to_matrix(w), st.cons[n], layer=n)
            st.masks[n] = matrix_to_weight(m, tuple(w.shape)).clone()
    st.masks.apply(model)
    st.acc["admm_hard"] = ctx.val_accuracy()
    ctx.finetune(st.masks, p.retrain_epochs, tag="admm_retrain")
    st.acc["admm"] = ctx.val_accuracy()
    st.stats["admm"] = compression_stats(model, layout)
    ctx.log(
        f"  ADMM pruned: acc {st.acc['admm']:.4f}, conv compression "
        f"{st.stats['admm']['compression_conv']:.2f}x"
    )


def _purify(ctx: CompressContext, p: ADMMParams, st: _ADMMState, example: torch.Tensor) -> None:
    """Network Purification (Sec. 3.3, th1-th4) with masks, eval-exact, optional retraining."""
    pur = network_purification(
        st.model, example, layers=st.names, th1=p.th1, th2=p.th2, th3=p.th3, th4=p.th4
    )
    st.masks = st.masks.combine(pur.masks)
    st.masks.apply(st.model)
    st.info["purification"] = {
        "rounds": pur.report["rounds"],
        "thresholds": pur.report["thresholds"],
        "pruned_channels": pur.report["pruned_channels"],
        "pruned_filters": pur.report["pruned_filters"],
        "kept_constant": pur.report["kept_constant"],
    }
    st.acc["admm+prm"] = ctx.val_accuracy()
    if p.prm_retrain_epochs:
        ctx.finetune(st.masks, p.prm_retrain_epochs, tag="prm_retrain")
        st.acc["admm+prm_retrained"] = ctx.val_accuracy()
    st.stats["admm+prm"] = compression_stats(st.model, st.layout)
    ctx.log(
        f"  P-RM: acc {st.acc['admm+prm']:.4f}, conv compression "
        f"{st.stats['admm+prm']['compression_conv']:.2f}x"
    )


def _quantize(ctx: CompressContext, p: ADMMParams, st: _ADMMState) -> str:
    """Distillation quantisation (Algorithm 2) onto the level sets; returns the stage tag."""
    st.info["distillation"] = distill_quantize(
        st.model,
        ctx.train_data,
        st.level_sets,
        st.masks,
        ctx.finetune_cfg,
        teacher=st.teacher,
        epochs=p.quant_epochs,
        sigma=p.distill_sigma,
        temperature=p.distill_temperature,
        device=ctx.device,
        seed=ctx.seed,
        log=ctx.log,
    )
    tag = "admm+prm+quant" if p.prm else "admm+quant"
    st.acc[tag] = ctx.val_accuracy()
    st.stats[tag] = compression_stats(st.model, st.layout)
    mods = dict(st.model.named_modules())
    st.info["scales"] = {n: layer_scale(mods[n].weight) for n in st.level_sets}
    codes = next(iter(st.level_sets.values())).codes
    ctx.log(f"  quantised ({codes} codes): acc {st.acc[tag]:.4f}")
    return tag


def _result(p: ADMMParams, st: _ADMMState, example: torch.Tensor) -> CompressResult:
    """Final masks, unused path removal (physically with ``physical``, else reported) and the
    packed layout."""
    model, layout, info = st.model, st.layout, st.info
    info["val_accuracy"] = st.acc
    info["compression"] = st.stats
    masks = MaskSet.from_model(model, list(layout.layers))
    small = None
    if p.physical:
        small, small_layout, masks, upr = shrink(model, layout, example)
        info["unused_path_removal"] = upr
        info["physical"] = True
    elif p.upr_report:
        _, upr = remove_unused_paths(model, example, crossbar=layout.crossbar)
        upr.pop("removed_channels", None)
        info["unused_path_removal"] = upr
    new_layout: CrossbarLayout | None
    if small is not None:
        new_layout = best_packed_layout(small, small_layout) if p.pack else small_layout
    else:
        new_layout = best_packed_layout(model, layout) if p.pack else None
    if new_layout is not None:
        info["tiles"] = {"dense": layout.dense_tiles, "packed": new_layout.n_tiles}
    info["note"] = (
        "weights are quantised; the pipeline's finetune stage trains in float "
        "(set finetune.epochs: 0 to keep them on the levels)"
        if p.quantize
        else ""
    )
    return CompressResult(masks=masks, layout=new_layout, info=plain_info(info), model=small)


@register
class ADMM(Method[ADMMParams]):
    name = "admm"
    summary = (
        "ADMM structured pruning + memristor quantisation, network purification and unused path "
        "removal, distillation quantisation (Ma et al. ASP-DAC 2020)"
    )
    Params = ADMMParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        saver = stage_saver(ctx.run_dir / "stages" / STAGES_DIR) if ctx.run_dir else None
        return run_admm(ctx, self.params, on_stage=saver)


#: where a run keeps the model after each step of the method (``<run>/stages/admm_steps/``)
STAGES_DIR = "admm_steps"


def stage_saver(directory: Path) -> Callable[[str, nn.Module, MaskSet], None]:
    """An ``on_stage`` for :func:`run_admm` that keeps each step's model and masks as
    ``<directory>/<i>_<tag>.pt`` (atomic writes), so the steps of Ma et al. 2020 Table 1
    (pruned, + purification, + quantisation) can be measured later (the engine's
    ``admm-steps`` evaluation). The directory is emptied first: a rerun with fewer steps
    leaves no stale step behind."""
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    count = [0]

    def save(tag: str, model: nn.Module, masks: MaskSet) -> None:
        count[0] += 1
        name = f"{count[0]}_{tag}.pt"
        save_checkpoint(directory / name, {"tag": tag, "model": model.state_dict(),
                                           "masks": masks.state_dict()})  # fmt: skip

    return save
