"""Network Purification and Unused Path Removal ("P-RM"; Ma et al., ASP-DAC 2020, Sec. 5.1,
eqs. 8-9, Algorithm 1; introduced in Ma et al., arXiv 1905.00136).

**Which channels are coupled** comes from Torch-Pruning's dependency graph
(:class:`torch_pruning.DependencyGraph`), never from hand-written tracing: one
:class:`ChannelGroup` per group of coupled channels, with its *producers* (Conv2d/Linear layers
whose output channels form the group; several where residual additions join them) and its
*consumers* (layers that read the group's channels as inputs, with Torch-Pruning's index mapping
through flatten/reshape). A group whose producers feed the model output (the classifier) is
*terminal* and never removed.

**Unused paths** (Fig. 4). Channel r of a group is

* *dead* when every producer's filter r is all-zero. Its feature map is then a constant per
  channel (bias, BatchNorm shift, ReLU, pooling and additions of constants are constants), which
  the consumers still see. Before the consumers' rows are dropped the constant is **folded**:
  ``Δb = W[:, r] · v`` (Linear) or ``Δb_o = Σ_{kh,kw} W[o, r] · v`` (Conv2d, exact only without
  zero padding, or when v = 0, e.g. after a ReLU of a negative shift). Δb goes into the
  consumer's bias, or, for a bias-free consumer followed by BatchNorm, into that BatchNorm's
  running mean (μ ← μ - Δb, exact in eval mode and irrelevant in training mode, where a constant
  is removed by the batch mean anyway); a new bias is created only where allowed (physical
  removal). A dead channel whose constant cannot be folded exactly (non-zero constant into a
  zero-padded convolution, or a non-constant map such as a padded average pool) is kept and
  reported (``kept_constant``).
* *unused* when every consumer's rows for r are all-zero: its producers' filters are zeroed
  (nothing reads them, the output is unchanged).

:func:`mask_unused_paths` applies both rules to a fixed point *in place, with masks* (shapes
unchanged, eval-mode outputs unchanged); :func:`remove_unused_paths` then *physically* removes
every channel that is dead and unused with Torch-Pruning (BatchNorm channels, biases and
residual partners go with it), on a copy; the smaller model's eval outputs equal the masked
model's to float tolerance.

**Network Purification** (Algorithm 1): per layer i and input channel j with δ = kh·kw rows
(the paper's "columns", its GEMM matrix being our mapped matrix transposed) of row energies
``e_k = ||row_k||²``::

    η_ij = #{k : e_k >= Th1} / δ        (eq. 8, the fraction of non-empty rows)
    σ_ij = Σ_k e_k / δ                  (eq. 9, importance)

channel j is pruned when ``η < Th2 and σ < Th3``; filter m is pruned when it is empty or
``||filter_m||² < Th4``; the coupled filter / channel of the neighbouring layer follows through
:func:`mask_unused_paths`. The paper gives no threshold values; ours are relative to each layer:
Th1 = th1 · median non-zero row energy, Th3 = th3 · median non-zero channel σ, Th4 = th4 ·
median non-zero filter energy, Th2 = th2 (a fraction). Defaults th1 = 0.01, th2 = 0.5,
th3 = 0.05, th4 = 0.01 are conservative (only channels/filters far weaker than the layer's
typical one go). Algorithm 1 is a single pass; we iterate it to a fixed point (removing a
channel can empty a filter and vice versa). A layer never loses its last channel or filter, and
the output layer's filters (the classes) are never pruned.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from xbarprune.errors import CompressionError, check_range
from xbarprune.hardware.spec import CrossbarSpec
from xbarprune.mapping.layout import CrossbarLayout, mappable_layers
from xbarprune.mapping.matrix import weight_to_matrix
from xbarprune.mapping.permute import pack_layout
from xbarprune.training.masks import MaskSet

_LAYERS = (nn.Conv2d, nn.Linear)


# ----------------------------------------------------------------------------- eqs. (8), (9)
def channel_scores(mat: Tensor, kernel_numel: int, th1: float = 0.0) -> tuple[Tensor, Tensor]:
    """η (eq. 8) and σ (eq. 9) per input channel of a mapped matrix (R, C), R = channels·δ.

    ``th1`` is the absolute row-energy threshold Th1: a row counts as non-empty when its energy
    ``||row||²`` is non-zero and at least ``th1``.
    """
    R = mat.shape[0]
    if kernel_numel < 1 or R % kernel_numel:
        raise CompressionError(f"{R} rows are not a whole number of channels of {kernel_numel}")
    e = mat.detach().double().pow(2).sum(1).view(R // kernel_numel, kernel_numel)
    nz = (e > 0) & (e >= th1)
    return nz.double().mean(1), e.mean(1)


def _median_nonzero(v: Tensor) -> float:
    v = v[v > 0]
    return float(v.median()) if v.numel() else 0.0


# ----------------------------------------------------------------------------- dependency graph
@dataclass
class Member:
    """One layer of a channel group: its name, module and, per root channel, its indices."""

    name: str
    module: nn.Conv2d | nn.Linear
    idx: dict[int, list[int]]


@dataclass
class ChannelGroup:
    """Coupled channels (Torch-Pruning group rooted at ``root``'s output channels)."""

    root: str
    n: int
    producers: list[Member]
    consumers: list[Member]
    terminal: bool
    root_module: nn.Module = field(repr=False)


@dataclass
class Trace:
    graph: Any  # torch_pruning.DependencyGraph (torch_pruning has no type information)
    groups: list[ChannelGroup]
    names: dict[nn.Module, str]


def trace_channel_groups(model: nn.Module, example_input: Tensor) -> Trace:
    """Torch-Pruning dependency groups of ``model`` (traced in eval mode on ``example_input``).

    Raises :class:`CompressionError` when Torch-Pruning cannot trace the model or does not see a
    Conv2d/Linear layer on the traced path (e.g. a layer used through its ``weight`` only).
    """
    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise CompressionError(
            "unused path removal needs torch-pruning (pip install torch-pruning)"
        ) from exc
    names = {m: n for n, m in model.named_modules()}
    mappable = mappable_layers(model, on_unsupported="digital")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
    except Exception as exc:
        raise CompressionError(
            f"Torch-Pruning cannot trace the model {type(model).__name__} on an input of shape "
            f"{tuple(example_input.shape)} ({type(exc).__name__}: {exc}); unused path removal "
            "needs a model whose forward pass Torch-Pruning can trace"
        ) from exc
    finally:
        model.train(was_training)
    untraced = [n for n, m in mappable.items() if m not in dg.module2node]
    if untraced:
        raise CompressionError(
            f"layer(s) {', '.join(repr(n) for n in untraced)} of {type(model).__name__} are not "
            "seen by Torch-Pruning's trace (used through their weights, or off the forward path); "
            "unused path removal cannot tell which channels they couple"
        )
    groups = []
    for g in dg.get_all_groups(root_module_types=_LAYERS):
        root_item = g[0]
        root_mod = root_item.dep.target.module
        producers: list[Member] = []
        consumers: list[Member] = []
        terminal = False
        for it in g:
            node = it.dep.target
            mod = node.module
            is_out = dg.is_out_channel_pruning_fn(it.dep.handler)
            if node.type == tp.ops.OPTYPE.OUTPUT or (is_out and len(node.outputs) == 0):
                terminal = True
            if not isinstance(mod, _LAYERS) or mod not in names:
                continue
            mp: dict[int, list[int]] = defaultdict(list)
            for i, r in zip(it.idxs, it.root_idxs, strict=True):
                mp[int(r)].append(int(i))
            (producers if is_out else consumers).append(Member(names[mod], mod, dict(mp)))
        groups.append(
            ChannelGroup(
                root=names[root_mod],
                n=len(root_item.idxs),
                producers=producers,
                consumers=consumers,
                terminal=terminal,
                root_module=root_mod,
            )
        )
    return Trace(dg, groups, names)


# ----------------------------------------------------------------------------- helpers
def _out_zero(m: Member, r: int) -> bool:
    return bool((m.module.weight[m.idx.get(r, [])] == 0).all())


def _in_zero(m: Member, r: int) -> bool:
    return bool((m.module.weight[:, m.idx.get(r, [])] == 0).all())


@torch.no_grad()
def _capture_inputs(model: nn.Module, example: Tensor, modules: Sequence[nn.Module]) -> dict:
    store: dict[nn.Module, Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp: store.__setitem__(mod, inp[0].detach()))
        for m in set(modules)
    ]
    was = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return store


def _bn_after(trace: Trace, module: nn.Module) -> nn.modules.batchnorm._BatchNorm | None:
    node = trace.graph.module2node.get(module)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0].module
    if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.running_mean is not None:
        return nxt
    return None


def _fold_plan(
    trace: Trace, c: Member, r: int, x: Tensor, allow_new_bias: bool, tol: float
) -> tuple[Tensor, str] | str:
    """Bias change of consumer ``c`` for dropping root channel r (input ``x``), or a reason."""
    idx = c.idx.get(r, [])
    w = c.module.weight.detach()
    vals = x[:, idx]
    red = tuple(d for d in range(vals.dim()) if d != 1)
    spread = vals.amax(dim=red) - vals.amin(dim=red)
    big = float(vals.abs().max()) if vals.numel() else 0.0
    if bool((spread > tol * (1.0 + big)).any()):
        return "its input is not a constant map"
    v = vals.reshape(vals.shape[0], vals.shape[1], -1)[0, :, 0] if vals.dim() > 2 else vals[0]
    if bool((v == 0).all()):
        return torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), "zero"
    if isinstance(c.module, nn.Conv2d):
        pad = c.module.padding
        padded = pad != "valid" if isinstance(pad, str) else any(int(q) != 0 for q in pad)
        if padded:
            return f"a non-zero constant ({float(v.abs().max()):.3g}) feeds a zero-padded conv"
        delta = w[:, idx].sum(dim=(2, 3)) @ v.to(w.dtype)
    else:
        delta = w[:, idx] @ v.to(w.dtype)
    if c.module.bias is not None:
        return delta, "bias"
    if _bn_after(trace, c.module) is not None:
        return delta, "bn"
    if allow_new_bias:
        return delta, "new_bias"
    return f"'{c.name}' has no bias and no BatchNorm after it to absorb the constant"


@torch.no_grad()
def _apply_fold(trace: Trace, c: Member, r: int, delta: Tensor, where: str) -> None:
    mod = c.module
    if where == "bias":
        assert isinstance(mod.bias, Tensor)  # _fold_plan chose "bias": the layer has one
        mod.bias.add_(delta)
    elif where == "bn":
        bn = _bn_after(trace, mod)
        assert bn is not None and bn.running_mean is not None  # _fold_plan chose "bn"
        bn.running_mean.sub_(delta)
    elif where == "new_bias":
        mod.bias = nn.Parameter(delta.clone())
    mod.weight[:, c.idx.get(r, [])] = 0


# ----------------------------------------------------------------------------- masked P-RM
@torch.no_grad()
def mask_unused_paths(
    model: nn.Module,
    example_input: Tensor,
    *,
    trace: Trace | None = None,
    allow_new_bias: bool = False,
    max_rounds: int = 100,
    tol: float = 1e-6,
) -> dict:
    """Zero every unused path in place (dead channels folded into their consumers, unused
    channels' producer filters zeroed) until nothing changes; eval outputs are unchanged.

    Returns a report: ``rounds``, ``folded`` (channels whose constant was folded, per group
    root), ``zeroed_filters``, ``kept_constant`` (dead channels that could not be folded, with
    the reason) and ``max_abs_diff`` (eval output change on ``example_input``, float noise).
    """
    trace = trace or trace_channel_groups(model, example_input)
    was = model.training
    model.eval()
    y0 = model(example_input)
    consumers = [c.module for g in trace.groups for c in g.consumers]
    folded: dict[str, int] = defaultdict(int)
    zeroed: dict[str, int] = defaultdict(int)
    kept: dict[tuple[str, int], str] = {}
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007
        changed = False
        inputs = _capture_inputs(model, example_input, consumers)
        for g in trace.groups:
            if g.terminal:
                continue
            for r in range(g.n):
                pz = all(_out_zero(p, r) for p in g.producers)
                cz = all(_in_zero(c, r) for c in g.consumers)
                if pz and not cz:
                    plans: list[tuple[Member, tuple[Tensor, str]]] | None = []
                    for c in g.consumers:
                        if _in_zero(c, r):
                            continue
                        plan = _fold_plan(trace, c, r, inputs[c.module], allow_new_bias, tol)
                        if isinstance(plan, str):
                            kept[(g.root, r)] = plan
                            plans = None
                            break
                        assert plans is not None  # set to None only right before the break
                        plans.append((c, plan))
                    if plans is None:
                        continue
                    for c, (delta, where) in plans:
                        _apply_fold(trace, c, r, delta, where)
                    kept.pop((g.root, r), None)
                    folded[g.root] += 1
                    changed = True
                elif cz and not pz:
                    for p in g.producers:
                        p.module.weight[p.idx.get(r, [])] = 0
                    zeroed[g.root] += 1
                    changed = True
        if not changed:
            break
    y1 = model(example_input)
    model.train(was)
    return {
        "rounds": rounds,
        "folded": dict(folded),
        "zeroed_filters": dict(zeroed),
        "kept_constant": [
            {"group": k[0], "channel": k[1], "reason": v} for k, v in sorted(kept.items())
        ],
        "max_abs_diff": float((y1 - y0).abs().max()),
    }


# ----------------------------------------------------------------------------- Algorithm 1
@dataclass
class PurificationResult:
    masks: MaskSet
    report: dict


@torch.no_grad()
def network_purification(
    model: nn.Module,
    example_input: Tensor,
    *,
    layers: Sequence[str] | None = None,
    th1: float = 0.01,
    th2: float = 0.5,
    th3: float = 0.05,
    th4: float = 0.01,
    max_rounds: int = 20,
    allow_new_bias: bool = False,
) -> PurificationResult:
    """Algorithm 1 (Network Purification & Unused Path Removal, masked) iterated to a fixed
    point, in place. Returns masks (weight != 0) of every mapped layer and a report with the
    thresholds used and η/σ of every channel pruned by purification.

    ``layers``: the layers whose channels/filters purification may prune (default: every
    mapped layer); unused-path propagation acts on all coupled layers.
    """
    for name, v in (("th1", th1), ("th3", th3), ("th4", th4)):
        check_range(name, v, low=0.0)
    check_range("th2", th2, low=0.0, high=1.0)
    trace = trace_channel_groups(model, example_input)
    mods = mappable_layers(model, on_unsupported="digital")
    names = list(mods) if layers is None else list(layers)
    unknown = [n for n in names if n not in mods]
    if unknown:
        raise CompressionError(f"cannot purify unknown layer(s): {', '.join(unknown)}")
    terminal = {p.name for g in trace.groups if g.terminal for p in g.producers}
    pruned_channels: list[dict] = []
    pruned_filters: list[dict] = []
    prm_reports = []
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007
        before = sum(int((mods[n].weight != 0).sum()) for n in mods)
        for name in names:
            mod = mods[name]
            w = mod.weight
            mat = weight_to_matrix(w.detach())
            k = mat.shape[0] // w.shape[1]
            rows_e = mat.double().pow(2).sum(1)
            t1 = th1 * _median_nonzero(rows_e)
            eta, sigma = channel_scores(mat, k, t1)
            t3 = th3 * _median_nonzero(sigma)
            alive_ch = sigma > 0
            cand = alive_ch & (eta < th2) & (sigma < t3)
            if int(cand.sum()) >= int(alive_ch.sum()):  # keep the strongest channel
                cand[int(torch.argmax(sigma))] = False
            for j in torch.nonzero(cand).flatten().tolist():
                w[:, j] = 0
                pruned_channels.append(
                    {"layer": name, "channel": j, "eta": float(eta[j]), "sigma": float(sigma[j])}
                )
            if name in terminal:
                continue
            fe = mat.double().pow(2).sum(0)
            t4 = th4 * _median_nonzero(fe)
            alive_f = fe > 0
            fc = alive_f & (fe < t4)
            if int(fc.sum()) >= int(alive_f.sum()):
                fc[int(torch.argmax(fe))] = False
            for m in torch.nonzero(fc).flatten().tolist():
                w[m] = 0
                pruned_filters.append({"layer": name, "filter": m, "energy": float(fe[m])})
        prm_reports.append(
            mask_unused_paths(model, example_input, trace=trace, allow_new_bias=allow_new_bias)
        )
        after = sum(int((mods[n].weight != 0).sum()) for n in mods)
        if after == before:
            break
    masks = MaskSet.from_model(model, list(mods))
    report = {
        "thresholds": {"th1": th1, "th2": th2, "th3": th3, "th4": th4},
        "rounds": rounds,
        "pruned_channels": pruned_channels,
        "pruned_filters": pruned_filters,
        "unused_paths": prm_reports[-1] if prm_reports else {},
        "kept_constant": prm_reports[-1]["kept_constant"] if prm_reports else [],
    }
    return PurificationResult(masks, report)


# ----------------------------------------------------------------------------- physical UPR
def _layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {
        n: list(m.weight.shape) for n, m in mappable_layers(model, on_unsupported="digital").items()
    }


def remove_unused_paths(
    model: nn.Module,
    example_input: Tensor,
    *,
    crossbar: CrossbarSpec | None = None,
    tol: float = 1e-6,
) -> tuple[nn.Module, dict]:
    """Physically remove every unused filter/channel of a masked model (on a copy).

    Unused paths are first masked and folded (:func:`mask_unused_paths`, new biases allowed),
    then every channel that is dead (all producer filters zero) and unused (all consumer rows
    zero) is removed with Torch-Pruning, together with its BatchNorm channels and residual
    partners. A group keeps at least one channel; terminal groups (the model output) are not
    touched. ``model`` itself is not modified.

    Returns ``(smaller_model, report)``; the report has per-layer weight shapes before/after,
    the removed channels per group, the constant channels kept, ``max_abs_diff`` between the
    masked and the smaller model's eval outputs on ``example_input`` and, with ``crossbar``,
    ``tiles``: the masked model's dense and compacted (all-zero rows/columns dropped) tile
    counts and the smaller model's dense tile count.

    Limitation: exact in eval mode (folded constants use BatchNorm running statistics).
    """
    import torch_pruning as tp  # noqa: F401  (checked in trace_channel_groups)

    from xbarprune.mapping.layout import map_model

    small = copy.deepcopy(model)
    small.eval()
    with torch.no_grad():
        was = model.training
        model.eval()
        y0 = model(example_input)
        model.train(was)
    shapes_before = _layer_shapes(small)
    trace = trace_channel_groups(small, example_input)
    prm = mask_unused_paths(small, example_input, trace=trace, allow_new_bias=True, tol=tol)
    tiles: dict = {}
    if crossbar is not None:
        lay = map_model(small, crossbar, on_unsupported="digital")
        tiles["masked_dense"] = lay.dense_tiles
        tiles["masked_compacted"] = pack_layout(lay, small, "weight").n_tiles
    removed: dict[str, list[int]] = {}
    plans = []
    with torch.no_grad():
        for g in trace.groups:
            if g.terminal or not g.consumers:
                continue
            dead = [
                r
                for r in range(g.n)
                if all(_out_zero(p, r) for p in g.producers)
                and all(_in_zero(c, r) for c in g.consumers)
            ]
            if len(dead) >= g.n:
                dead = dead[1:]  # a group keeps one channel (a constant, already folded)
            if dead:
                plans.append((g, dead))
    dg = trace.graph
    for g, dead in plans:
        pruner = dg.get_pruner_of_module(g.root_module)
        group = dg.get_pruning_group(g.root_module, pruner.prune_out_channels, dead)
        group.prune()
        removed[g.root] = dead
    with torch.no_grad():
        y1 = small(example_input)
    if hasattr(small, "build_spec"):
        # the config's architecture no longer describes this model
        del small.build_spec
    shapes_after = _layer_shapes(small)
    if crossbar is not None:
        lay2 = map_model(small, crossbar, on_unsupported="digital")
        tiles["removed_dense"] = lay2.dense_tiles
        tiles["removed_compacted"] = pack_layout(lay2, small, "weight").n_tiles
    report = {
        "layers": {
            n: {"before": shapes_before[n], "after": shapes_after.get(n)} for n in shapes_before
        },
        "removed": {k: len(v) for k, v in removed.items()},
        "removed_channels": removed,
        "folded": prm["folded"],
        "kept_constant": prm["kept_constant"],
        "weights_before": sum(math.prod(s) for s in shapes_before.values()),
        "weights_after": sum(math.prod(s) for s in shapes_after.values()),
        "max_abs_diff": float((y1 - y0).abs().max()),
        "tiles": tiles,
    }
    return small, report


def shrink(
    model: nn.Module, layout: CrossbarLayout, example_input: Tensor
) -> tuple[nn.Module, CrossbarLayout, MaskSet, dict]:
    """The physically smaller model of a masked one, for a method's result (issue #19).

    :func:`remove_unused_paths` on ``model``, then the smaller model's dense layout over the
    same layers and its masks (its zeros). Returns ``(small, layout, masks, report)``.
    """
    from xbarprune.mapping.layout import map_model

    small, rep = remove_unused_paths(model, example_input, crossbar=layout.crossbar)
    rep.pop("removed_channels", None)
    names = list(layout.layers)
    lay = map_model(small, layout.crossbar, include=names)
    return small, lay, MaskSet.from_model(small, names), rep
