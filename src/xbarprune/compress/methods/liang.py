"""Crossbar-aware pruning of Liang, Deng et al. (IEEE Access 2018): LGD + RPP on crossbar groups.

L. Liang, L. Deng, Y. Zeng, X. Hu, Y. Ji, X. Ma, G. Li, Y. Xie, "Crossbar-aware neural network
pruning", IEEE Access 6 (2018), arXiv 1807.10816. Equation and algorithm numbers below are the
paper's; docs/methods/liang.md lists every choice the paper leaves open.

**Groups on the layout** (Sec. II-B, III-A). A layer's mapped matrix W (R x C; rows = inputs in
unfold order, columns = outputs) sits on the tiles of its :class:`LayerLayout`. Input FM group i
= row band i: the ``crossbar.rows`` consecutive rows of the (possibly reordered) layout that feed
one row of tiles (I = ceil(R / rows) bands). Output FM group j = K_out consecutive columns:

* ``grain="crossbar"``: K_out = the logical columns of one tile, so (i, j) is one whole tile
  and beta_L0^{ij} = 0 frees it;
* ``grain="column"``: K_out = ``k_out_conv`` (1) for conv layers and ``k_out_fc`` (8) for FC
  layers (Sec. III-D); the surviving column segments of each row band are then recombined
  into fewer tiles (**output recombination**, :func:`~xbarprune.mapping.permute.pack_columns`).

**Per-layer problem** (Eq. 1-7, Alg. 3). On sampled inputs x (one row per sampled output
position), the partial sum of band i for output q is ``Y_E^{i,q} = sum_{r in band i} x_r W_rq``
(Eq. 1-2); for output group j, column i of X stacks Y_E^{i,q} over the samples and q in group j,
and Y = sum_i X[:, i] is the complete sum (Eq. 3-4). Eq. (7), min ||Y - X beta||^2 s.t.
||beta||_0 = r, is solved per output group by LGD with RPP (:mod:`xbarprune.compress.parts.lgd`,
Eq. 8, Alg. 1-2), batched over all groups of the layer. Only the normal equations enter, and
they follow exactly from the input Gram matrix G = sum_m x_m x_m^T:
``(X^T X)_{ik} = sum_{q in j} W_{i,q}^T G_{ik} W_{k,q}`` (W_{i,q}: band i of column q), so the
sampled inputs are streamed once per layer and never stored.

**Refit** (Eq. 10). With the support fixed, the surviving weights of each output column are
refit by least squares on a second, smaller sample (2 points per FM): ``W_rem = (LR_X^T
LR_X)^-1 LR_X^T LR_Y``, LR_X = the current network's inputs on the kept rows, LR_Y = the
original network's outputs (He et al. 2017 / ThiNet, refs [35], [38]); ``ridge`` adds
lambda * I, shrinking towards the current weights (lambda = ridge * mean diag).

**Input FM reorder** (Sec. III-C, Eq. 9). Importance of input FM p = the signed sum over the
sampled data of ``Y_F^p = sum_q Y_S^{p,q}`` (no absolute value: the paper's reason is that a
strongly positive and a strongly negative FM in one crossbar cancel); FMs are mapped in
descending order (a row permutation of the layout), which places weak FMs together in the same
row bands. The mapped matrix is unchanged, so the ideal output is too.

**Network level** (Sec. III-E, IV-C). Single-layer sweeps over ``ratios`` (20-70 % in 5 %
steps; accuracy drops on the validation split, never the test split), initial ratio from
T_d_initial, then the ratio is raised in ``ratio_step`` steps until a stop condition holds
(accuracy drop > T_d, ratio > T_p, remaining crossbars < T_c; ours: one input group left); then the
whole network is pruned layer by layer with these ratios (statistics from the partly pruned
network), masks fixed. The first conv and the last FC layer are not pruned. The pipeline's
fine-tune stage (masks fixed) is the paper's final fine-tuning.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from xbarprune.compress.base import (
    CompressContext,
    CompressResult,
    Method,
    plain_info,
    register,
)
from xbarprune.compress.parts.lgd import Sampling, Select, lgd_gram, top_r
from xbarprune.compress.selection import LayerSelection, unknown_names
from xbarprune.errors import CompressionError, SpecError, check_range
from xbarprune.mapping.layout import CrossbarLayout, LayerLayout
from xbarprune.mapping.matrix import conv_unfold, matrix_to_weight, weight_to_matrix
from xbarprune.mapping.permute import (
    channel_order_to_rows,
    pack_columns,
    packed_tile_count,
    permuted,
)
from xbarprune.training.loop import evaluate_accuracy
from xbarprune.training.masks import MaskSet

Grain = Literal["crossbar", "column"]

DEFAULT_RATIOS: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 2) for i in range(11))

# bound on the elements of one unfolded sub-batch (B x R x L) while sampling
_UNFOLD_ELEMS = 1 << 23


@dataclass(frozen=True)
class LiangParams:
    """Config of ``method: {name: liang, params: ...}``.

    Grain and groups:
        grain: ``"column"`` (paper's choice for its results) or ``"crossbar"``.
        k_out_conv, k_out_fc: output FMs per output group at column grain (paper: 1 and 8).
        reorder: input FM reorder by Eq. (9) before pruning.
    Solver (Eq. 7-8, Alg. 1-2):
        selection: ``"lgd"`` (the paper) or ``"magnitude"`` (baseline: the r groups of
            largest RMS weight on the same groups, same refit).
        projection: ``"rpp"`` or ``"deterministic"`` (top-r, i.e. r0 = 0).
        r0: RPP relaxation factor (paper: not given; its Fig. 4 example uses 1).
        sampling: RPP draw, ``"sequential"`` or ``"bernoulli"`` (see :mod:`.lgd`).
        iterations: LGD iterations (paper: 50).
        lr: LGD step size eta; None = 1 / lambda_max(X^T X) per output group.
        select: LGD result, ``"best"`` iterate or ``"last"`` (see :func:`.lgd.lgd_gram`).
        refit: least-squares refit of the surviving weights (Eq. 10).
        regression_target: LR_Y from the ``"original"`` network or the ``"current"`` one.
        ridge: relative ridge of the refit (lambda = ridge * mean diag of LR_X^T LR_X).
    Sampling (Sec. IV-A):
        images: class-balanced training images (paper: 5000).
        lgd_points, regression_points: sampled output positions per image and FM (paper: 10
            and 2); an FC layer has one position.
        batch_size: images per forward pass while sampling.
    Network level (Sec. III-E):
        ratio: one pruning ratio (sparsity of beta) for every prunable layer, skipping the
            sweeps (paper Fig. 9(b)); None = sweeps and stop conditions.
        layer_ratios: fixed ratios for named layers (skip their sweeps).
        ratios: single-layer sweep grid (paper: 20-70 % in 5 % steps).
        td_initial: accuracy-drop threshold for the initial ratio (fraction, 0.01 = 1 pp).
        stop_conditions: raise the ratio from the initial one until T_d / T_p / T_c stops it
            (the paper's "optimized case"); False = initial ratios ("case1/case2").
        td, tp, tc: thresholds: accuracy drop > td, ratio > tp, remaining crossbars of the
            layer < tc (0 disables T_c, as the paper does for VGG-8).
        ratio_step, ratio_max: step and ceiling of the raise.
        stop_inclusive: keep the ratio at which a condition first holds (paper Fig. 10:
            Conv4_2 keeps 65 % > T_p = 60 %); False keeps the one before.
        eval_samples: validation images for the sweeps' accuracy (None = all).
    Layers and training:
        skip_first, skip_last: leave the first and the last mapped layer dense (paper).
        exclude: further layers left dense.
        small_layers: a prunable layer with fewer than 2 row bands has no choice to make:
            ``"error"`` or ``"skip"`` (leave it dense).
        ft_epochs_per_layer: fine-tune epochs after each layer is pruned (masks fixed).
        ft_epochs: fine-tune epochs at the end inside the method (the pipeline's fine-tune
            stage follows anyway).
        pack: return the recombined (packed) layout; False = the reordered dense layout.
        seed: seed of every draw; None = the experiment seed.
    """

    grain: Grain = "column"
    k_out_conv: int = 1
    k_out_fc: int = 8
    reorder: bool = True
    selection: Literal["lgd", "magnitude"] = "lgd"
    projection: Literal["rpp", "deterministic"] = "rpp"
    r0: int = 1
    sampling: Literal["sequential", "bernoulli"] = "sequential"
    iterations: int = 50
    lr: float | None = None
    select: Literal["best", "last"] = "best"
    refit: bool = True
    regression_target: Literal["original", "current"] = "original"
    ridge: float = 1e-3
    images: int = 5000
    lgd_points: int = 10
    regression_points: int = 2
    batch_size: int = 256
    ratio: float | None = None
    layer_ratios: dict[str, float] = field(default_factory=dict)
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    td_initial: float = 0.01
    stop_conditions: bool = True
    td: float = 0.04
    tp: float = 0.6
    tc: int = 0
    ratio_step: float = 0.05
    ratio_max: float = 0.95
    stop_inclusive: bool = True
    eval_samples: int | None = 1000
    skip_first: bool = True
    skip_last: bool = True
    exclude: tuple[str, ...] = ()
    small_layers: Literal["error", "skip"] = "error"
    ft_epochs_per_layer: int = 0
    ft_epochs: int = 0
    pack: bool = True
    seed: int | None = None

    @property
    def layer_selection(self) -> LayerSelection:
        """The layers this method prunes (:mod:`xbarprune.compress.selection`)."""
        return LayerSelection(
            exclude=tuple(self.exclude), keep_first=self.skip_first, keep_last=self.skip_last
        )

    def __post_init__(self) -> None:
        pre = "method.params"
        choices = {
            "grain": ("crossbar", "column"),
            "selection": ("lgd", "magnitude"),
            "projection": ("rpp", "deterministic"),
            "sampling": ("sequential", "bernoulli"),
            "select": ("best", "last"),
            "regression_target": ("original", "current"),
            "small_layers": ("error", "skip"),
        }
        for name, allowed in choices.items():
            v = getattr(self, name)
            if v not in allowed:
                raise SpecError(f"{pre}.{name} = {v!r}; allowed: {', '.join(allowed)}")
        for name in (
            "k_out_conv",
            "k_out_fc",
            "iterations",
            "images",
            "lgd_points",
            "regression_points",
            "batch_size",
        ):
            check_range(f"{pre}.{name}", getattr(self, name), low=1)
        for name in ("r0", "tc", "ft_epochs_per_layer", "ft_epochs"):
            check_range(f"{pre}.{name}", getattr(self, name), low=0)
        if self.lr is not None:
            check_range(f"{pre}.lr", self.lr, low=0.0, low_open=True)
        check_range(f"{pre}.ridge", self.ridge, low=0.0)
        if self.ratio is not None:
            check_range(f"{pre}.ratio", self.ratio, low=0.0, high=1.0, high_open=True)
        for n, v in self.layer_ratios.items():
            check_range(f"{pre}.layer_ratios.{n}", v, low=0.0, high=1.0, high_open=True)
        if not self.ratios:
            raise SpecError(f"{pre}.ratios is empty; give at least one sweep ratio")
        for v in self.ratios:
            check_range(f"{pre}.ratios[]", v, low=0.0, high=1.0, high_open=True)
        for name in ("td_initial", "td"):
            check_range(f"{pre}.{name}", getattr(self, name), low=0.0, high=1.0)
        check_range(f"{pre}.tp", self.tp, low=0.0, high=1.0)
        check_range(f"{pre}.ratio_step", self.ratio_step, low=0.0, low_open=True, high=1.0)
        check_range(f"{pre}.ratio_max", self.ratio_max, low=0.0, high=1.0, high_open=True)
        if self.eval_samples is not None:
            check_range(f"{pre}.eval_samples", self.eval_samples, low=1)

    @property
    def r0_effective(self) -> int:
        return 0 if self.projection == "deterministic" else int(self.r0)

    def k_out(self, kind: str) -> int:
        return self.k_out_conv if kind == "conv" else self.k_out_fc


# ------------------------------------------------------------------------------- sampling


def _base_dataset(data) -> Dataset:
    return data.dataset if isinstance(data, DataLoader) else data


def _size(ds: Dataset) -> int:
    """``len(ds)``: map-style data sets have one, though torch's ``Dataset`` declares none."""
    if not isinstance(ds, Sized):
        raise TypeError(f"object of type '{type(ds).__name__}' has no len()")
    return len(ds)


def _labels(ds: Dataset) -> Tensor:
    if isinstance(ds, TensorDataset) and len(ds.tensors) > 1:
        return ds.tensors[1].reshape(-1).long()
    if isinstance(ds, Subset):
        return _labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    return torch.tensor([int(ds[i][1]) for i in range(_size(ds))], dtype=torch.long)


def _images(ds: Dataset, idx: Tensor) -> Tensor:
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][idx]
    return torch.stack([torch.as_tensor(ds[int(i)][0]) for i in idx])


def balanced_images(data, n: int, generator: torch.Generator) -> Tensor:
    """``n`` training images, the same number per class (Sec. IV-A), chosen at random.

    A class with fewer images gives all it has; the remainder of ``n // classes`` goes to
    the first classes.
    """
    ds = _base_dataset(data)
    if _size(ds) == 0:
        raise CompressionError("liang: the training set is empty; it samples its inputs there")
    y = _labels(ds)
    classes = torch.unique(y)
    per, extra = divmod(int(n), len(classes))
    picks = []
    for k, c in enumerate(classes):
        members = torch.nonzero(y == c).reshape(-1)
        members = members[torch.randperm(len(members), generator=generator)]
        picks.append(members[: per + (1 if k < extra else 0)])
    idx = torch.sort(torch.cat(picks)).values
    return _images(ds, idx)


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass once the layer's input is known."""


@torch.no_grad()
def layer_input(model: nn.Module, name: str, x: Tensor) -> Tensor:
    """Input of module ``name`` when ``model`` runs on ``x`` (the forward stops there)."""
    mod = dict(model.named_modules()).get(name)
    if mod is None:
        raise CompressionError(f"layer '{name}' is not in the model")
    box: dict[str, Tensor] = {}

    def hook(_m, args):
        box["x"] = args[0].detach()
        raise _Stop

    h = mod.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if "x" not in box:
        raise CompressionError(f"layer '{name}' is never called in the model's forward pass")
    return box["x"]


def _patches(mod: nn.Conv2d | nn.Linear, x: Tensor) -> Tensor:
    """Layer input -> (B, R, L): the mapped-matrix input vector at each output position."""
    if isinstance(mod, nn.Conv2d):
        return conv_unfold(mod, x)[0]
    R = mod.weight.shape[1]
    return x.reshape(x.shape[0], -1, R).transpose(1, 2)


def _pick(p: Tensor, idx: Tensor) -> Tensor:
    """(B, R, L) at positions idx (B, k) -> (B*k, R)."""
    B, R, _ = p.shape
    g = p.gather(2, idx.to(p.device).unsqueeze(1).expand(B, R, idx.shape[1]))
    return g.permute(0, 2, 1).reshape(-1, R)


@dataclass
class LayerStats:
    """Streamed sample statistics of one layer's inputs (float64, CPU).

    gram_lgd: (R, R) sum of x x^T over the LGD samples (current network);
    row_sum: (R,) sum of x over the LGD samples (Eq. 9);
    gram_reg: (R, R) sum of x x^T over the regression samples (current network);
    cross_reg: (R, R) sum of x x_orig^T over the regression samples with x_orig the original
        network's input at the same positions; None when the two inputs are the same.
    """

    gram_lgd: Tensor
    row_sum: Tensor
    gram_reg: Tensor
    cross_reg: Tensor | None
    n_lgd: int
    n_reg: int


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    name: str,
    images: Tensor,
    *,
    lgd_points: int = 10,
    regression_points: int = 2,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    original: nn.Module | None = None,
    device: torch.device | str = "cpu",
) -> LayerStats:
    """Sample ``lgd_points`` and ``regression_points`` output positions of layer ``name`` per
    image (uniformly, without replacement; all positions if fewer) and accumulate
    :class:`LayerStats`. ``original``: the unpruned network, for the refit's targets."""
    mod = dict(model.named_modules())[name]
    R = weight_to_matrix(mod.weight).shape[0]
    f64 = torch.float64
    g_lgd = torch.zeros(R, R, dtype=f64)
    s_lgd = torch.zeros(R, dtype=f64)
    g_reg = torch.zeros(R, R, dtype=f64)
    c_reg = torch.zeros(R, R, dtype=f64) if original is not None else None
    n_lgd = n_reg = 0
    for xb in images.split(batch_size):
        xb = xb.to(device)
        xin = layer_input(model, name, xb)
        xor = layer_input(original, name, xb) if original is not None else None
        per = max(1, _patches(mod, xin[:1]).numel())
        step = max(1, _UNFOLD_ELEMS // per)
        for a in range(0, xb.shape[0], step):
            p = _patches(mod, xin[a : a + step]).float()
            B, _, L = p.shape
            keys = torch.rand(B, L, generator=generator)
            order = torch.argsort(keys, dim=1)
            il = order[:, : min(lgd_points, L)]
            ir = torch.argsort(torch.rand(B, L, generator=generator), dim=1)[
                :, : min(regression_points, L)
            ]
            xl = _pick(p, il)
            g_lgd += (xl.t() @ xl).to(f64).cpu()
            s_lgd += xl.sum(0).to(f64).cpu()
            xr = _pick(p, ir)
            g_reg += (xr.t() @ xr).to(f64).cpu()
            if c_reg is not None:
                assert xor is not None  # both come from ``original``
                po = _patches(mod, xor[a : a + step]).float()
                c_reg += (xr.t() @ _pick(po, ir)).to(f64).cpu()
            n_lgd += xl.shape[0]
            n_reg += xr.shape[0]
    return LayerStats(g_lgd, s_lgd, g_reg, c_reg, n_lgd, n_reg)


# ------------------------------------------------------------------------- layer problem


def _single_block(layer: LayerLayout) -> tuple[Tensor, Tensor]:
    R, C = layer.matrix_shape
    b = layer.blocks[0]
    if len(layer.blocks) != 1 or len(b.rows) != R or len(b.cols) != C:
        raise CompressionError(
            f"layer '{layer.name}': liang prunes a dense or permuted layout (one block with "
            f"every row and column); this one has {len(layer.blocks)} block(s)"
        )
    return b.rows, b.cols


def group_size(layer: LayerLayout, grain: str, k_out: int) -> int:
    """Columns per output FM group: one tile's columns (crossbar grain) or ``k_out``."""
    x = layer.crossbar
    if grain == "crossbar":
        return x.weights_per_row
    if grain != "column":
        raise CompressionError(f"grain = {grain!r}; allowed: 'crossbar', 'column'")
    if k_out > x.weights_per_row:
        raise CompressionError(
            f"layer '{layer.name}': column grain with K_out = {k_out} output FMs per group "
            f"needs at least {k_out} logical columns per crossbar; a {x.rows}x{x.cols} "
            f"crossbar holds {x.weights_per_row}"
        )
    return int(k_out)


def check_layer(layer: LayerLayout, grain: str, k_out: int) -> None:
    """Raise :class:`CompressionError` (naming the layer) if it cannot have this grain."""
    _single_block(layer)
    R, _ = layer.matrix_shape
    x = layer.crossbar
    if x.row_bands(R) < 2:
        raise CompressionError(
            f"layer '{layer.name}': its {R} crossbar rows fit in one row band of a "
            f"{x.rows}x{x.cols} crossbar, so {grain}-grain pruning has no input group to "
            "choose between; exclude the layer (method.params.exclude), set "
            "small_layers: skip, or use smaller crossbars"
        )
    group_size(layer, grain, k_out)


def channel_importance(layer: LayerLayout, W: Tensor, row_sum: Tensor) -> Tensor:
    """Eq. (9) summed over the samples: sum_m sum_q Y_S^{p,q} per input FM p (signed)."""
    imp_rows = row_sum.to(torch.float64) * W.to(torch.float64).sum(1)
    return imp_rows.view(layer.in_channels, layer.kernel_numel).sum(1)


def reorder_layout(layer: LayerLayout, W: Tensor, row_sum: Tensor) -> tuple[LayerLayout, Tensor]:
    """Input FMs in descending Eq. (9) importance (ties: lower index first) -> row permutation."""
    _, cols = _single_block(layer)
    imp = channel_importance(layer, W, row_sum)
    order = torch.sort(imp, descending=True, stable=True).indices
    return permuted(layer, channel_order_to_rows(layer, order), cols), order


@dataclass
class LayerProblem:
    """Everything the LGD and the refit need for one layer, groups in layout order.

    band (R,) row -> input group i; group (C,) column -> output group j; A (J, I, I), b (J, I),
    yy (J,) the normal equations of Eq. (7) per output group; rhs (R, C) = LR_X^T LR_Y.
    """

    name: str
    layout: LayerLayout
    weight: Tensor
    band: Tensor
    group: Tensor
    n_bands: int
    n_groups: int
    A: Tensor
    b: Tensor
    yy: Tensor
    gram_reg: Tensor
    rhs: Tensor
    n_reg: int
    channel_order: Tensor | None = None


def build_problem(
    layer: LayerLayout,
    W: Tensor,
    stats: LayerStats,
    *,
    grain: Grain = "column",
    k_out: int = 1,
    reorder: bool = True,
    W_target: Tensor | None = None,
) -> LayerProblem:
    """Assemble the Eq. (7) normal equations of every output group of a layer.

    ``W`` (R, C) is the layer's current mapped matrix; ``W_target`` the original one when the
    refit's targets come from the original network (with ``stats.cross_reg``).
    """
    check_layer(layer, grain, k_out)
    R, C = layer.matrix_shape
    x = layer.crossbar
    W64 = W.detach().to(torch.float64).cpu()
    order = None
    if reorder:
        layer, order = reorder_layout(layer, W64, stats.row_sum)
    rows, cols = _single_block(layer)
    gsize = group_size(layer, grain, k_out)
    I = x.row_bands(R)
    J = math.ceil(C / gsize)
    band = torch.empty(R, dtype=torch.long)
    band[rows] = torch.arange(R) // x.rows
    group = torch.empty(C, dtype=torch.long)
    group[cols] = torch.arange(C) // gsize
    G = stats.gram_lgd
    a_col = torch.zeros(C, I, I, dtype=torch.float64)
    for k in range(I):
        rk = rows[k * x.rows : (k + 1) * x.rows]
        H = G[:, rk] @ W64[rk]  # (R, C): (G W_k) for band k
        part = torch.zeros(I, C, dtype=torch.float64).index_add_(0, band, W64 * H)
        a_col[:, :, k] = part.t()  # A_c[i, k] = W_{i,c}^T G_{ik} W_{k,c}
    A = torch.zeros(J, I, I, dtype=torch.float64).index_add_(0, group, a_col)
    A = 0.5 * (A + A.transpose(1, 2))
    b = A.sum(-1)  # X^T Y with Y = X 1 (Eq. 4, 7)
    yy = A.sum((-1, -2))
    if W_target is not None and stats.cross_reg is not None:
        rhs = stats.cross_reg @ W_target.detach().to(torch.float64).cpu()
    else:
        rhs = stats.gram_reg @ W64
    return LayerProblem(
        name=layer.name,
        layout=layer,
        weight=W64,
        band=band,
        group=group,
        n_bands=I,
        n_groups=J,
        A=A,
        b=b,
        yy=yy,
        gram_reg=stats.gram_reg,
        rhs=rhs,
        n_reg=stats.n_reg,
        channel_order=order,
    )


def keep_for_ratio(ratio: float, n_bands: int) -> int:
    """Kept input groups per output group for a pruning ratio (sparsity of beta):
    ``I - round(ratio * I)`` (halves up), at least 1."""
    return max(1, n_bands - int(math.floor(ratio * n_bands + 0.5)))


@dataclass
class LayerSolution:
    """support (J, I) bool beta_L0 per output group; mask (R, C) kept weights; weight (R, C)
    the new mapped matrix; tiles the layer's crossbars after recombination; rel_error the
    Eq. (7) loss of the binary mask before the refit over ||Y||^2."""

    support: Tensor
    mask: Tensor
    weight: Tensor
    tiles: int
    rel_error: float
    keep: int


def _magnitude_support(prob: LayerProblem, keep: int) -> Tensor:
    W2 = prob.weight.pow(2)
    ones = torch.ones_like(W2)
    I, J = prob.n_bands, prob.n_groups

    def agg(m: Tensor) -> Tensor:
        s = torch.zeros(I, m.shape[1], dtype=m.dtype).index_add_(0, prob.band, m)
        return torch.zeros(I, J, dtype=m.dtype).index_add_(1, prob.group, s)

    rms = (agg(W2) / agg(ones).clamp_min(1)).sqrt()
    return top_r(rms.t(), keep)


def _refit(prob: LayerProblem, support: Tensor, mask: Tensor, ridge: float) -> Tensor:
    """Eq. (10) per output column on its kept rows, one solve per distinct support."""
    out = prob.weight * mask
    if prob.n_reg == 0:
        return out
    uniq, inv = torch.unique(support, dim=0, return_inverse=True)
    col_sup = inv[prob.group]  # (C,) support id of each column
    for u in range(uniq.shape[0]):
        cols = torch.nonzero(col_sup == u).reshape(-1)
        rows = torch.nonzero(uniq[u][prob.band]).reshape(-1)
        if cols.numel() == 0 or rows.numel() == 0:
            continue
        Gs = prob.gram_reg[rows][:, rows]
        lam = ridge * float(Gs.diagonal().mean()) if ridge > 0 else 0.0
        w0 = prob.weight[rows][:, cols]
        rhs = prob.rhs[rows][:, cols] + lam * w0  # ridge towards the current weights
        M = Gs + lam * torch.eye(len(rows), dtype=Gs.dtype)
        try:
            sol = torch.linalg.solve(M, rhs)
        except RuntimeError:
            sol = torch.linalg.pinv(M, hermitian=True) @ rhs
        if not bool(torch.isfinite(sol).all()):
            sol = w0
        out[rows.view(-1, 1), cols.view(1, -1)] = sol
    return out


def solve_layer(
    prob: LayerProblem,
    keep: int,
    *,
    selection: str = "lgd",
    r0: int = 1,
    iterations: int = 50,
    lr: float | None = None,
    sampling: Sampling = "sequential",
    select: Select = "best",
    refit: bool = True,
    ridge: float = 1e-3,
    generator: torch.Generator | None = None,
) -> LayerSolution:
    """Alg. 3 for one layer: LGD (or magnitude) support per output group, then Eq. (10)."""
    I = prob.n_bands
    if int(keep) != keep or keep < 1 or keep > I:
        raise CompressionError(
            f"layer '{prob.name}': budget of {keep} kept input groups per output group is "
            f"impossible: the layer has {I} input groups (crossbar row bands); allowed: "
            f"1 <= r <= {I}"
        )
    keep = int(keep)
    if selection == "lgd":
        res = lgd_gram(
            prob.A,
            prob.b,
            prob.yy,
            keep,
            r0=r0,
            iterations=iterations,
            lr=lr,
            generator=generator,
            sampling=sampling,
            select=select,
        )
        support = res.support
    elif selection == "magnitude":
        support = _magnitude_support(prob, keep)
    else:
        raise CompressionError(f"selection = {selection!r}; allowed: 'lgd', 'magnitude'")
    s = support.to(torch.float64)
    err = prob.yy - 2 * (s * prob.b).sum(-1) + torch.einsum("ji,jik,jk->j", s, prob.A, s)
    rel = float(err.sum().clamp_min(0) / prob.yy.sum().clamp_min(1e-300))
    mask = support.t()[prob.band][:, prob.group]  # (R, C): beta_L0^{band(r), group(c)}
    weight = _refit(prob, support, mask, ridge) if refit else prob.weight * mask
    tiles = packed_tile_count(prob.layout, mask.to(torch.float32), "column")
    return LayerSolution(support, mask, weight, tiles, rel, keep)


def solve_with(prob: LayerProblem, keep: int, p: LiangParams, generator) -> LayerSolution:
    return solve_layer(
        prob,
        keep,
        selection=p.selection,
        r0=p.r0_effective,
        iterations=p.iterations,
        lr=p.lr,
        sampling=p.sampling,
        select=p.select,
        refit=p.refit,
        ridge=p.ridge,
        generator=generator,
    )


# ------------------------------------------------------------------------- network level


def prunable_layers(layout: CrossbarLayout, p: LiangParams) -> list[str]:
    names = list(layout.layers)
    unknown = [*unknown_names(p.exclude, names), *(n for n in p.layer_ratios if n not in layout)]
    if unknown:
        raise SpecError(
            f"method.params names unknown layer(s): {', '.join(unknown)}; "
            f"mapped layers: {', '.join(names)}"
        )
    return p.layer_selection.select(layout)


def choose_ratio(evaluate: Callable[[float], dict], p: LiangParams) -> tuple[float, dict]:
    """Sec. III-E: initial ratio from the sweep and T_d_initial, then the stop conditions.

    Initial: among sweep ratios whose drop exceeds ``td_initial``, the one whose drop is
    closest to it (ties: the smaller ratio); none: the largest sweep ratio. Raise: from the
    initial ratio in ``ratio_step`` steps until drop > td, ratio > tp or (tc > 0) remaining
    crossbars < tc, or ``ratio_max``; also when one input group per output group is left
    (``keep == 1``, stop ``"r_min"``: a higher ratio prunes nothing more).

    ``evaluate`` must measure the drop on held-out **validation** data (``run_liang`` reads
    ``ctx.selection_data``): the chosen ratios are a selection, never made on the test split.
    """
    curve = [evaluate(r) for r in p.ratios]
    above = [c for c in curve if c["drop"] > p.td_initial]
    if above:
        init = min(above, key=lambda c: (c["drop"] - p.td_initial, c["ratio"]))["ratio"]
    else:
        init = max(p.ratios)
    rec: dict = {"sweep": curve, "initial_ratio": init}
    if not p.stop_conditions:
        rec.update(final_ratio=init, stop=["initial"], raise_path=[])
        return init, rec
    ratio, prev, path = init, None, []
    while True:
        c = evaluate(ratio)
        path.append(c)
        why = []
        if c["drop"] > p.td:
            why.append("T_d")
        if ratio > p.tp + 1e-9:
            why.append("T_p")
        if p.tc > 0 and c["tiles"] < p.tc:
            why.append("T_c")
        if not why and c.get("keep") == 1:
            # one input group left per output group: a higher ratio prunes nothing more
            # (r >= 1), so the search ends here and reports the ratio it reached
            why.append("r_min")
        if why:
            final = ratio if (p.stop_inclusive or prev is None) else prev
            break
        nxt = round(ratio + p.ratio_step, 6)
        if nxt > p.ratio_max + 1e-9:
            final, why = ratio, ["ratio_max"]
            break
        prev, ratio = ratio, nxt
    rec.update(final_ratio=final, stop=why, raise_path=path)
    return final, rec


def search_summary(records: dict[str, dict], ratios: dict[str, float]) -> dict:
    """What decided the Sec. III-E search: per layer its final ratio and stop reason, and
    ``sensitivity_decided`` = whether at least one layer stopped on its validation drop
    (T_d; or on the initial ratio without stop conditions). False means every layer ran into
    a cap (T_p, ratio_max or r_min) and the sweeps had no effect on the result (the defect of the
    committed ``optimized`` arms, issue #21: every layer at 0.80 on T_p)."""
    stops = {n: list(r["stop"]) for n, r in records.items()}
    finals = {n: ratios[n] for n in records}
    on_drop = [n for n, st in stops.items() if "T_d" in st or "initial" in st]
    decided = bool(on_drop)
    return {
        "ratios": finals,
        "stops": stops,
        "stopped_on_drop": on_drop,
        "sensitivity_decided": decided,
        "selection_split": "val",
    }


def peripheral_crossbars(layout: CrossbarLayout) -> int:
    """Input-buffer + output-reduce crossbars of ``layout``: our model of the part of the
    paper's *total* crossbars that pruning cannot remove (Liang et al. 2018, Sec. IV-C, Fig.
    9(b); SemiMap's compiler, which counts them in the paper, is not public). Per mapped layer:
    one buffer crossbar per input group (row band) and, when the layer has more than one row
    band, one reduce crossbar per output column band; both fixed by the dense layout."""
    total = 0
    for lay in layout:
        rows, cols = lay.matrix_shape
        bands, col_bands = lay.crossbar.tile_grid(rows, cols)
        total += bands + (col_bands if bands > 1 else 0)
    return total


def _score_fn(ctx: CompressContext, p: LiangParams, seed: int) -> Callable[[nn.Module], float]:
    val = _base_dataset(ctx.selection_data("liang ratio sweeps"))
    n = _size(val) if p.eval_samples is None else min(p.eval_samples, _size(val))
    if n < _size(val):
        idx = torch.randperm(_size(val), generator=torch.Generator().manual_seed(seed + 17))[:n]
        val = Subset(val, idx.tolist())
    loader = DataLoader(val, batch_size=512, shuffle=False)
    return lambda model: evaluate_accuracy(model, loader, ctx.device)


def _gen(seed: int, *salt: int) -> torch.Generator:
    s = int(seed) * 1_000_003
    for k, v in enumerate(salt):
        s += (k + 1) * 7919 * (int(v) + 1)
    return torch.Generator().manual_seed(s % (2**63 - 1))


def run_liang(ctx: CompressContext, p: LiangParams) -> CompressResult:
    """The whole method on ``ctx.model`` (in place); see the module docstring.

    Three phases (:class:`_LiangRun`): choose the layers (first / last / excluded / too-small
    ones stay dense), choose one pruning ratio per layer (fixed, uniform, or the Sec. III-E
    single-layer validation sweeps with stop conditions), then prune the network layer by layer
    with masks fixed (LGD / RPP + refit, Eq. 10, optional output recombination)."""
    run = _LiangRun(ctx, p)
    names = run.select_layers()
    was_training = run.model.training
    run.model.eval()
    run.sample_images()
    ratios, records = run.choose_ratios(names)
    masks, new_layout = run.prune(names, ratios, records)
    run.model.train(was_training)
    return CompressResult(masks=masks, layout=new_layout, info=plain_info(run.info))


class _LiangRun:
    """The state one :func:`run_liang` call shares between its phases (model, layout, the
    class-balanced images, the dense copy for the ``original`` regression target, info)."""

    def __init__(self, ctx: CompressContext, p: LiangParams) -> None:
        self.ctx = ctx
        self.p = p
        self.seed = ctx.seed if p.seed is None else int(p.seed)
        self.model = ctx.model
        self.layout = ctx.layout
        self.mods = dict(self.model.named_modules())
        self.images: torch.Tensor | None = None
        self.original: nn.Module | None = None
        self.info: dict = {
            "grain": p.grain,
            "reorder": p.reorder,
            "selection": p.selection,
            "projection": p.projection,
            "r0": p.r0_effective,
            "skipped": {},
            "layers": {},
        }

    # -- phase 1: the layers
    def select_layers(self) -> list[str]:
        """The prunable layers; with ``small_layers="skip"`` a layer of < 2 row bands stays
        dense (recorded in ``info["skipped"]``)."""
        p, layout = self.p, self.layout
        names = prunable_layers(layout, p)
        for n in list(names):
            lay = layout[n]
            try:
                check_layer(lay, p.grain, p.k_out(lay.kind))
            except CompressionError as exc:
                if p.small_layers == "skip" and lay.crossbar.row_bands(lay.matrix_shape[0]) < 2:
                    self.info["skipped"][n] = str(exc)
                    names.remove(n)
                    self.ctx.log(f"  liang: {n} left dense (fewer than 2 row bands)")
                    continue
                raise
        if not names:
            raise CompressionError(
                "liang: no layer left to prune (first/last/excluded/small layers removed them all)"
            )
        return names

    def sample_images(self) -> None:
        """Class-balanced training images (Sec. IV-A) and the dense reference copy."""
        self.images = balanced_images(
            self.ctx.train_data, self.p.images, torch.Generator().manual_seed(self.seed)
        )
        self.info["images"] = len(self.images)
        self.original = copy.deepcopy(self.model).eval()

    def problem(self, n: str, li: int, orig: nn.Module | None) -> LayerProblem:
        """Layer ``n``'s LGD / regression problem from the current network's statistics."""
        p, lay = self.p, self.layout[n]
        assert self.images is not None
        stats = collect_stats(
            self.model,
            n,
            self.images,
            generator=_gen(self.seed, 1, li),
            original=orig,
            lgd_points=p.lgd_points,
            regression_points=p.regression_points,
            batch_size=p.batch_size,
            device=self.ctx.device,
        )
        W = weight_to_matrix(self.mods[n].weight.detach()).cpu()
        Wt = None
        if orig is not None:
            Wt = weight_to_matrix(dict(orig.named_modules())[n].weight.detach()).cpu()
        return build_problem(
            lay, W, stats, grain=p.grain, k_out=p.k_out(lay.kind), reorder=p.reorder, W_target=Wt
        )

    # -- phase 2: the ratios
    def choose_ratios(self, names: list[str]) -> tuple[dict[str, float], dict[str, dict]]:
        """Per-layer ratios: ``layer_ratios``, else ``ratio``, else the single-layer sweeps on
        validation data with the stop conditions (:func:`choose_ratio`)."""
        p = self.p
        ratios: dict[str, float] = {}
        records: dict[str, dict] = {}
        for n in names:
            if n in p.layer_ratios:
                ratios[n] = float(p.layer_ratios[n])
            elif p.ratio is not None:
                ratios[n] = float(p.ratio)
        todo = [n for n in names if n not in ratios]
        if not todo:
            return ratios, records
        score = _score_fn(self.ctx, p, self.seed)
        acc0 = score(self.model)
        self.info["acc_dense_val"] = acc0
        self.ctx.log(
            f"  liang: single-layer sweeps on {len(todo)} layer(s), reference acc {acc0:.4f}"
        )
        for n in todo:
            sweep = _LayerSweep(self, n, names.index(n), score, acc0)
            ratios[n], records[n] = choose_ratio(sweep, p)
            self.ctx.log(
                f"    {n}: ratio {ratios[n]:.2f} (initial {records[n]['initial_ratio']:.2f},"
                f" stop {'/'.join(records[n]['stop'])})"
            )
        self.info["search"] = search_summary(records, ratios)
        if not self.info["search"]["sensitivity_decided"]:
            self.ctx.log(
                "  liang: WARNING every searched layer stopped on T_p / ratio_max / r_min: the "
                "Sec. III-E sensitivity search had no effect (single-layer validation drops "
                f"stayed below td = {p.td:g}); lower td or raise tp"
            )
        return ratios, records

    # -- phase 3: the network, layer by layer
    def prune(
        self, names: list[str], ratios: dict[str, float], records: dict[str, dict]
    ) -> tuple[MaskSet, CrossbarLayout]:
        """Prune ``names`` in order at their ratios, masks fixed once set; each later layer's
        statistics come from the already-pruned network (regressing onto the ``original``
        outputs when asked), with optional fine-tunes per layer and at the end."""
        p, ctx, model, layout = self.p, self.ctx, self.model, self.layout
        masks = MaskSet()
        new_layout = layout
        changed = False
        for li, n in enumerate(names):
            orig = self.original if (changed and p.regression_target == "original") else None
            prob = self.problem(n, li, orig)
            keep = keep_for_ratio(ratios[n], prob.n_bands)
            sol = solve_with(prob, keep, p, _gen(self.seed, 3, li, keep))
            w = self.mods[n].weight
            shape = tuple(w.shape)
            with torch.no_grad():
                w.copy_(matrix_to_weight(sol.weight.to(w.dtype), shape).to(w.device))
            masks[n] = matrix_to_weight(sol.mask, shape)
            masks.apply(model)
            placed = pack_columns(prob.layout, sol.mask.float()) if p.pack else prob.layout
            new_layout = new_layout.replace(placed)
            changed = True
            rec = records.get(n, {})
            rec.update(
                ratio=ratios[n],
                keep=keep,
                input_groups=prob.n_bands,
                output_groups=prob.n_groups,
                actual_ratio=1.0 - keep / prob.n_bands,
                tiles_dense=layout[n].dense_tiles,
                tiles=sol.tiles,
                rel_error=sol.rel_error,
                samples_regression=prob.n_reg,
                channel_order=prob.channel_order,
            )
            self.info["layers"][n] = rec
            ctx.log(
                f"  liang: {n} ratio {ratios[n]:.2f} keep {keep}/{prob.n_bands}, crossbars "
                f"{layout[n].dense_tiles} -> {sol.tiles}"
            )
            if p.ft_epochs_per_layer > 0:
                ctx.finetune(masks, p.ft_epochs_per_layer, tag=f"liang_{n.replace('.', '_')}")
                model.eval()  # the next layer's statistics are taken in inference mode
        if p.ft_epochs > 0:
            ctx.finetune(masks, p.ft_epochs, tag="liang_ft")
        masks.apply(model)
        self.info["crossbars"] = {
            "dense": layout.dense_tiles,
            "compressed": new_layout.tiles_needed(model),
            "prunable_dense": sum(layout[n].dense_tiles for n in names),
            "prunable_compressed": sum(self.info["layers"][n]["tiles"] for n in names),
        }
        return masks, new_layout


class _LayerSweep:
    """One layer's single-layer sweep (Sec. III-E): ``sweep(ratio)`` prunes only this layer at
    ``ratio`` on the dense network, scores it on validation data, restores the weights, and
    caches by the number of kept input groups (ratios that round to the same count share)."""

    def __init__(
        self, run: _LiangRun, name: str, li: int, score: Callable[[nn.Module], float], acc0: float
    ) -> None:
        self.run, self.li, self.score, self.acc0 = run, li, score, acc0
        self.prob = run.problem(name, li, None)
        self.w = run.mods[name].weight
        self.saved = self.w.detach().clone()
        self.cache: dict[int, dict] = {}

    def __call__(self, ratio: float) -> dict:
        keep = keep_for_ratio(ratio, self.prob.n_bands)
        if keep not in self.cache:
            run, w, saved = self.run, self.w, self.saved
            sol = solve_with(self.prob, keep, run.p, _gen(run.seed, 2, self.li, keep))
            with torch.no_grad():
                new = matrix_to_weight(sol.weight.to(saved.dtype), tuple(saved.shape))
                w.copy_(new.to(w.device))
            acc = self.score(run.model)
            with torch.no_grad():
                w.copy_(saved)
            self.cache[keep] = {
                "keep": keep,
                "drop": self.acc0 - acc,
                "acc": acc,
                "tiles": sol.tiles,
                "rel_error": sol.rel_error,
            }
        return {"ratio": ratio, **self.cache[keep]}


@register
class Liang(Method[LiangParams]):
    name = "liang"
    summary = (
        "crossbar-aware L0 pruning (Liang et al. 2018): LGD + relaxant probabilistic "
        "projection on crossbar/column groups, output recombination, input FM reorder"
    )
    Params = LiangParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        return run_liang(ctx, self.params)


__all__: Sequence[str] = (
    "LayerProblem",
    "LayerSolution",
    "LayerStats",
    "Liang",
    "LiangParams",
    "balanced_images",
    "build_problem",
    "channel_importance",
    "check_layer",
    "choose_ratio",
    "collect_stats",
    "keep_for_ratio",
    "layer_input",
    "reorder_layout",
    "run_liang",
    "search_summary",
    "solve_layer",
)
