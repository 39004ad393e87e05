"""TraNNsformer (Ankit, Sengupta, Roy, ICCAD 2017, arXiv 1708.07949): prune + cluster in training.

Integrated training (paper Alg. 3 as the authors' MATLAB code schedules it; every constant and
its source in docs/methods/trannsformer.md):

* every epoch: SGD over the training set **without gradient masking** (pruned weights may regrow,
  zeros inside cluster blocks fill in), then the full-batch training loss, then per layer
  (``prunewt.m``): before the cluster-start epoch magnitude pruning ``keep = |w| >= theta``
  (``adp.m``); at it, SCIC (:mod:`xbarprune.compress.parts.scic`) of the pruned connectivity into
  clusters that meet the size rule, whose blocks are protected from then on; after it, the union
  ``keep = cmap | (|w| >= theta)`` (``cdp.m``), and when the unclustered fraction changed by less
  than ``tol`` since the last re-clustering, SCIC of the unclustered synapses with the quality
  decaying 0.7 -> 0.3 until a level yields a cluster;
* from the cluster-prune epoch: cluster pruning (``cluster_prune.m``): score = quality at
  formation x block synapses with |w| >= theta; clusters with score <= f * max score are removed;
* after an epoch whose training loss fell below the previous epoch's, theta (and, once cluster
  pruning runs, f) grow by their per-epoch increments.

Fixed code bugs (``matlab_compat=False``, the default): the trimmed-index bug of ``cluster.m``
is always fixed; invalidated clusters are never re-marked in the cluster map; score-0 clusters
are pruned; the start test is ``>=`` with a once-flag, not ``epoch == 0.2 * E``.

Mapping (:func:`trannsformer_layout`): each valid cluster becomes a
:class:`~xbarprune.mapping.layout.Block` (its inputs = mapped-matrix rows, its outputs =
columns; ``ceil(in/X) * ceil(out/X)`` crossbars); cells of a block already held by an earlier
(overlapping) cluster are holes of the later block (``Block.mask``). The synapses outside every
cluster (unclustered) are mapped by ``unclustered``: ``greedy`` (the code's
``map_unclustered.m`` windows), ``compact`` (their non-empty rows x columns tiled densely),
``pack`` (greedy windows trimmed and bin-packed into shared crossbars; ours) or ``drop`` (zeroed,
then fine-tuned with the masks fixed). ``pack=True`` bin-packs the cluster pieces too (first fit
decreasing; pieces whose input and output sets fit one crossbar together share it, block-
diagonally). The layout holds every non-zero weight exactly once, so the analog simulator and the
cost model use it unchanged and the ideal outputs equal the digital ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from xbarprune.compress.base import CompressContext, CompressResult, Method, plain_info, register
from xbarprune.compress.parts.scic import (
    Cluster,
    check_size,
    cluster_map,
    compact_count,
    dense_count,
    greedy_windows,
    scic,
)
from xbarprune.compress.selection import LayerSelection
from xbarprune.errors import (
    CheckpointError,
    CompressionError,
    SpecError,
    UnsupportedLayerError,
    check_range,
)
from xbarprune.hardware.spec import CrossbarSpec
from xbarprune.mapping.layout import Block, CrossbarLayout, LayerLayout
from xbarprune.training.loop import TrainHistory, load_epoch_checkpoint, save_epoch_checkpoint
from xbarprune.training.masks import MaskSet

Mode = Literal["trannsformer", "prune_only", "dense"]
Unclustered = Literal["greedy", "compact", "pack", "drop"]
UNCLUSTERED = ("greedy", "compact", "pack", "drop")

#: the initial weight scale of the code (U(-0.01, 0.01): std 0.01 / sqrt(3)); ``init_std``
#: threshold scaling multiplies the code's increments by (layer weight std) / this.
CODE_INIT_STD = 0.01 / math.sqrt(3.0)


@dataclass(frozen=True)
class TraNNsformerParams:
    """Config of ``method: {name: trannsformer, params: ...}``; defaults = the code's constants
    (``NN/run_fcn_general.m``, ``nnsetup.m``, ``prunewt.m``, ``cluster.m``,
    ``size_constrained_cluster.m``), except where docs/methods/trannsformer.md says otherwise.

    Schedule:
        mode: ``trannsformer`` (prunemode 2), ``prune_only`` (prunemode 1, Han et al.) or
            ``dense`` (prunemode 0).
        epochs: E, the integrated-training budget (code: 60 for MNIST, 1.5x the pruning run).
        cluster_start: first SCIC at epoch round(cluster_start * E) (code 0.2; 0.3 in its
            ``laterClustering`` variant).
        cluster_prune_start: cluster pruning from epoch ceil(cluster_prune_start * E) (0.8).
        prune_rate: theta increment per improving epoch, per weight layer, before slowdown
            (code ``0.001 * [0.5 0.5 0.5 2.5]``; the last entry repeats for deeper nets).
        ref_epochs: slowdown = ref_epochs / E (code ``epochs_mnist = 40``).
        prune_slowdown: extra factor (the code's MNIST pruning-only run: 0.7).
        threshold_scale: ``absolute`` (code: theta in weight units, tied to its U(+-0.01)
            init) or ``init_std`` (increments x layer weight std / 0.01/sqrt(3)).
        cp_factor0, cp_step: cluster-prune factor f, start and increment (0.005, 0.01).
    SCIC:
        xbar: crossbar size X (X x X synapses); None (default) = min(rows, weights_per_row)
            of the experiment's crossbar (the authors' scripts: ``crossbarSize = 64``).
        size_rule, size_mult: ``sum``: |in| + |out| <= size_mult * X (code, 2); ``dims``:
            |in| <= X and |out| <= X.
        k: spectral clusters per SC call (code 5); k_layers: per-layer override.
        q_first: quality threshold of the first clustering (0.7).
        q_levels: decay when re-clustering unclustered synapses (0.7 ... 0.3).
        tol: re-cluster when |delta unclustered fraction| < tol (0.05; fraction of all m*n).
        max_rounds: no-progress guard of the split loop (not in the code).
        split_failure: SC fails part-way through splitting an oversize cluster: keep the
            ``parent`` (code) or the sub-clusters ``found`` so far.
        matlab_compat: keep the code's cluster-map / score-0 quirks (index bug always fixed).
    Mapping:
        unclustered: ``greedy`` | ``compact`` | ``pack`` | ``drop`` (see module docstring).
        drop_epochs: fine-tune epochs after ``drop`` (masks fixed).
        pack: bin-pack cluster pieces into shared crossbars.
        layer_fallback: per transformed layer, map it compacted (non-empty rows x columns of
            the pruned matrix, tiled densely) instead of by clusters when that takes fewer
            crossbars (ours; the paper clusters every layer, which costs crossbars on narrow
            layers such as a 10-output classifier).
    Layers and training:
        conv: also transform Conv2d layers (unrolled (out, in*kh*kw) matrix); default FC only.
        layers: transform only these (names); empty = every Linear (and Conv2d if conv).
        exclude: layers left untouched.
        lr, momentum, batch_size: SGD (code 0.5, 0.5, 400; constant rate).
        loss: ``mse`` on one-hot targets (code, 0.5 * sum e^2 / batch) or ``ce``.
        reinit: re-initialise the transformed layers U(-0.01, 0.01) and zero biases (code init).
        seed: seed of data order and k-means; None = the experiment seed.
    """

    mode: Mode = "trannsformer"
    epochs: int = 45
    cluster_start: float = 0.2
    cluster_prune_start: float = 0.8
    prune_rate: tuple[float, ...] = (5e-4, 5e-4, 5e-4, 2.5e-3)
    ref_epochs: int = 40
    prune_slowdown: float = 1.0
    threshold_scale: Literal["absolute", "init_std"] = "absolute"
    cp_factor0: float = 0.005
    cp_step: float = 0.01
    xbar: int | None = None
    size_rule: Literal["sum", "dims"] = "sum"
    size_mult: int = 2
    k: int = 5
    k_layers: dict[str, int] = field(default_factory=dict)
    q_first: float = 0.7
    q_levels: tuple[float, ...] = (0.7, 0.6, 0.5, 0.4, 0.3)
    tol: float = 0.05
    max_rounds: int = 50
    split_failure: Literal["parent", "found"] = "parent"
    matlab_compat: bool = False
    unclustered: Unclustered = "greedy"
    drop_epochs: int = 2
    pack: bool = False
    layer_fallback: bool = False
    conv: bool = False
    layers: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def layer_selection(self) -> LayerSelection:
        """The layers this method transforms (:mod:`xbarprune.compress.selection`), over the
        candidates :func:`select_layers` found (``layers``, else every allowed module)."""
        return LayerSelection(
            exclude=tuple(self.exclude),
            include=tuple(self.layers),
            kinds=("conv", "linear") if self.conv else ("linear",),
            include_key="layers",
        )

    lr: float = 0.5
    momentum: float = 0.5
    batch_size: int = 400
    loss: Literal["mse", "ce"] = "mse"
    reinit: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        pre = "method.params"
        choices = {
            "mode": ("trannsformer", "prune_only", "dense"),
            "threshold_scale": ("absolute", "init_std"),
            "split_failure": ("parent", "found"),
            "size_rule": ("sum", "dims"),
            "unclustered": UNCLUSTERED,
            "loss": ("mse", "ce"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SpecError(
                    f"{pre}.{name} = {getattr(self, name)!r}; allowed: {', '.join(allowed)}"
                )
        check_range(f"{pre}.epochs", self.epochs, low=1)
        for name in ("cluster_start", "cluster_prune_start", "tol"):
            check_range(f"{pre}.{name}", getattr(self, name), low=0.0, high=1.0)
        if self.xbar is not None:
            check_size(self.xbar, f"{pre}.xbar (crossbar size)")
        for name in ("size_mult", "ref_epochs", "batch_size", "max_rounds"):
            check_range(f"{pre}.{name}", getattr(self, name), low=1)
        check_range(f"{pre}.k", self.k, low=2)
        for n, v in self.k_layers.items():
            check_range(f"{pre}.k_layers.{n}", v, low=2)
        check_range(f"{pre}.drop_epochs", self.drop_epochs, low=0)
        if not self.prune_rate:
            raise SpecError(f"{pre}.prune_rate is empty")
        for rate in (*self.prune_rate, self.prune_slowdown, self.cp_factor0, self.cp_step):
            check_range(f"{pre}.prune_rate/slowdown/cp", rate, low=0.0)
        if not self.q_levels:
            raise SpecError(f"{pre}.q_levels is empty")
        for q in (self.q_first, *self.q_levels):
            check_range(f"{pre}.q_first/q_levels", q, low=0.0, high=1.0, high_open=True)
        check_range(f"{pre}.lr", self.lr, low=0.0, low_open=True)
        check_range(f"{pre}.momentum", self.momentum, low=0.0, high=1.0, high_open=True)

    @property
    def cluster_epoch(self) -> int:
        """Epoch (1-based) of the first clustering: round(cluster_start * E), at least 1."""
        return max(1, int(math.floor(self.cluster_start * self.epochs + 0.5)))

    @property
    def cluster_prune_epoch(self) -> int:
        """First epoch of cluster pruning: ceil(cluster_prune_start * E)."""
        return max(1, math.ceil(self.cluster_prune_start * self.epochs - 1e-9))


# ------------------------------------------------------------------------------ layer state
@dataclass
class LayerState:
    """Per-layer state of the integrated training (``nnsetup.m``): masks are (out, in)."""

    name: str
    module: nn.Conv2d | nn.Linear
    theta: float = 0.0
    rate: float = 0.0
    cp_factor: float = 0.005
    k: int = 5
    clusters: list[Cluster] = field(default_factory=list)
    pmap: Tensor | None = None
    cmap: Tensor | None = None
    unc_prev: float = 0.0
    unc_curr: float = 0.0
    clustered: bool = False
    reclusterings: int = 0
    pruned_clusters: int = 0

    #: the scalar fields a checkpoint stores (:meth:`state_dict`)
    SCALARS = ("theta", "rate", "cp_factor", "k", "unc_prev", "unc_curr", "clustered",
               "reclusterings", "pruned_clusters")  # fmt: skip

    def state_dict(self) -> dict:
        """The integrated training's state of this layer (the weights live in the model's
        own state dict): scalars, clusters and the two maps, each map with where it lived."""
        d: dict[str, Any] = {k: getattr(self, k) for k in self.SCALARS}
        d["clusters"] = [c.state_dict() for c in self.clusters]
        for k in ("pmap", "cmap"):
            t = getattr(self, k)
            d[k] = None if t is None else t.cpu()
            d[f"{k}_on_cpu"] = t is None or t.device.type == "cpu"
        return d

    def load_state_dict(self, d: dict, device: torch.device | str = "cpu") -> None:
        """Restore what :meth:`state_dict` stored; tensors not on the CPU go to ``device``."""
        for k in self.SCALARS:
            setattr(self, k, type(getattr(self, k))(d[k]))
        self.clusters = [Cluster.from_state_dict(c, device) for c in d["clusters"]]
        for k in ("pmap", "cmap"):
            t = d[k]
            setattr(self, k, None if t is None else t.to("cpu" if d[f"{k}_on_cpu"] else device))

    @property
    def weight(self) -> Tensor:
        """The (out, in) view of the weight (conv: (out, in*kh*kw))."""
        w = self.module.weight.data
        return w.view(w.shape[0], -1)

    @property
    def shape(self) -> tuple[int, int]:
        w = self.module.weight
        return int(w.shape[0]), int(w[0].numel())

    @property
    def valid(self) -> list[Cluster]:
        return [c for c in self.clusters if c.valid]

    def stats(self) -> dict:
        W = self.weight
        nz = W != 0
        cm = (
            cluster_map(self.shape, self.clusters).to(nz.device)
            if self.clusters
            else torch.zeros_like(nz)
        )
        inside = int((nz & cm).sum())
        unc = int((nz & ~cm).sum())
        return {
            "theta": self.theta,
            "cp_factor": self.cp_factor,
            "density": float(nz.float().mean()),
            "clusters": len(self.valid),
            "clusters_oversize": sum(1 for c in self.valid if c.status == 0),
            "cmap_coverage": float(cm.float().mean()),
            "cluster_block_density": inside / max(int(cm.sum()), 1),
            "unclustered_of_all": unc / nz.numel(),
            "unclustered_of_remaining": unc / max(int(nz.sum()), 1),
            "reclusterings": self.reclusterings,
            "pruned_clusters": self.pruned_clusters,
        }


def select_layers(model: nn.Module, p: TraNNsformerParams) -> dict[str, nn.Conv2d | nn.Linear]:
    """Layers TraNNsformer transforms (clear errors for unsupported ones)."""
    mods = dict(model.named_modules())
    allowed = (nn.Linear, nn.Conv2d) if p.conv else (nn.Linear,)
    out: dict[str, nn.Conv2d | nn.Linear]
    if p.layers:
        out = {}
        for n in p.layers:
            if n not in mods:
                raise CompressionError(f"trannsformer: no layer named '{n}' in the model")
            m = mods[n]
            if not isinstance(m, allowed):
                what = "nn.Linear" + (" or nn.Conv2d (groups=1)" if p.conv else "")
                hint = "" if p.conv or not isinstance(m, nn.Conv2d) else " (set conv: true)"
                raise UnsupportedLayerError(
                    f"trannsformer: layer '{n}' ({type(m).__name__}) cannot be transformed; "
                    f"supported: {what}{hint}"
                )
            out[n] = m
    else:
        out = {n: m for n, m in mods.items() if isinstance(m, allowed) and n}
    for n, m in out.items():
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise UnsupportedLayerError(
                f"trannsformer: layer '{n}' is a grouped convolution (groups={m.groups}); "
                "only groups=1 convolutions have one unrolled connectivity matrix"
            )
    kinds = {n: "conv" if isinstance(m, nn.Conv2d) else "linear" for n, m in out.items()}
    chosen = set(p.layer_selection.select(kinds))
    out = {n: m for n, m in out.items() if n in chosen}
    if not out:
        raise UnsupportedLayerError(
            "trannsformer: the model has no layer to transform (it transforms nn.Linear "
            "layers, and nn.Conv2d with conv: true)"
        )
    return out


def init_states(model: nn.Module, p: TraNNsformerParams, xbar: int) -> list[LayerState]:
    layers = select_layers(model, p)
    slow = p.ref_epochs / p.epochs * p.prune_slowdown
    states = []
    for i, (n, m) in enumerate(layers.items()):
        k = int(p.k_layers.get(n, p.k))
        out_f, in_f = int(m.weight.shape[0]), int(m.weight[0].numel())
        if p.mode == "trannsformer" and k > min(in_f, out_f):
            raise CompressionError(
                f"trannsformer: k = {k} is larger than layer '{n}' ({in_f} inputs x {out_f} "
                f"outputs): a cluster needs at least one input and one output, so at most "
                f"{min(in_f, out_f)} clusters; lower k or k_layers['{n}']"
            )
        if p.reinit:
            with torch.no_grad():
                m.weight.uniform_(-0.01, 0.01)
                bias = getattr(m, "bias", None)
                if bias is not None:
                    bias.zero_()
        rate = p.prune_rate[min(i, len(p.prune_rate) - 1)] * slow
        if p.threshold_scale == "init_std":
            rate *= float(m.weight.detach().std()) / CODE_INIT_STD
        full = torch.ones(out_f, in_f, dtype=torch.bool)
        states.append(LayerState(n, m, 0.0, rate, p.cp_factor0, k, [], full.clone(), full.clone()))
    del xbar
    return states


# ------------------------------------------------------------------------------ epoch-end steps
def adp(L: LayerState) -> None:
    """``adp.m``: magnitude pruning, keep |w| >= theta."""
    W = L.weight
    L.pmap = W.abs() >= L.theta
    W.mul_(L.pmap.to(W.device))


def cdp(L: LayerState) -> None:
    """``cdp.m``: keep = cmap | (|w| >= theta); unclustered fraction over all m*n entries."""
    W = L.weight
    L.pmap = (W.abs() >= L.theta).cpu()
    assert L.cmap is not None  # cdp runs once the layer is clustered
    keep = L.cmap | L.pmap
    W.mul_(keep.to(W.device))
    L.unc_curr = float((keep & ~L.cmap).float().mean())


def _cmap(L: LayerState, p: TraNNsformerParams) -> Tensor:
    return cluster_map(L.shape, L.clusters, only_valid=not p.matlab_compat)


def prune_layer(
    L: LayerState, epoch: int, p: TraNNsformerParams, xbar: int, gen: torch.Generator
) -> None:
    """``prunewt.m`` for one layer at the end of ``epoch`` (1-based)."""
    if p.mode == "dense":
        return
    if p.mode == "prune_only" or epoch < p.cluster_epoch:
        adp(L)
        return
    kw: dict[str, Any] = {"k": L.k, "rule": p.size_rule, "mult": p.size_mult, "generator": gen}
    kw.update(max_rounds=p.max_rounds, split_failure=p.split_failure)
    if not L.clustered:
        assert L.pmap is not None  # init_states sets it, adp renews it
        # the code clusters the pmap of the previous epoch's adp (W already pruned by it)
        L.clusters = scic(L.pmap, p.q_first, xbar, **kw)
        for c in L.clusters:
            c.epoch = epoch
        L.cmap = _cmap(L, p)
        L.clustered = True
        L.unc_prev = L.unc_curr
        cdp(L)
        return
    if abs(L.unc_curr - L.unc_prev) >= p.tol:
        L.unc_prev = L.unc_curr
        cdp(L)
        return
    assert L.pmap is not None and L.cmap is not None  # the layer is clustered
    unc = L.pmap & ~L.cmap
    new: list[Cluster] = []
    if bool(unc.any()):
        for q in p.q_levels:
            new = scic(unc, q, xbar, **kw)
            if new:
                break
    if new:
        for c in new:
            c.epoch = epoch
        L.clusters += new
        L.cmap = _cmap(L, p)
        L.reclusterings += 1
    L.unc_prev = L.unc_curr
    cdp(L)


def cluster_prune(L: LayerState, p: TraNNsformerParams) -> None:
    """``cluster_prune.m``: remove clusters with score <= f * max score."""
    valid = L.valid
    if not valid:
        return
    assert L.cmap is not None and L.pmap is not None  # valid clusters: the layer is clustered
    live = L.cmap & L.pmap
    scores = [
        c.quality * int(live[c.outputs.view(-1, 1), c.inputs.view(1, -1)].sum()) for c in valid
    ]
    th = L.cp_factor * max(scores)
    changed = False
    for c, s in zip(valid, scores, strict=True):
        if s <= th and (s != 0 or not p.matlab_compat):
            c.quality = 0.0
            idx = (c.outputs.view(-1, 1), c.inputs.view(1, -1))
            L.cmap[idx] = False
            L.pmap[idx] = False
            L.pruned_clusters += 1
            changed = True
    if changed:
        if not p.matlab_compat:  # overlapping valid clusters keep their cells protected
            L.cmap = _cmap(L, p)
        W = L.weight
        W.mul_((L.cmap | L.pmap).to(W.device))


# ------------------------------------------------------------------------------ training
def _loss(out: Tensor, y: Tensor, kind: str) -> Tensor:
    if kind == "ce":
        return F.cross_entropy(out, y)
    e = F.one_hot(y, out.shape[1]).to(out.dtype) - out
    return 0.5 * (e * e).sum(1).mean()


@torch.no_grad()
def full_batch_loss(model: nn.Module, data, kind: str, device) -> float:
    model.eval()
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=2000)
    tot, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        tot += float(_loss(model(x), y, kind)) * len(y)
        n += len(y)
    return tot / max(n, 1)


class Resumable(Protocol):
    """State beside the model and optimizer that a resumed training must get back."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


def train_epochs(
    model: nn.Module,
    data,
    p: TraNNsformerParams,
    epochs: int,
    *,
    device,
    seed: int,
    masks: MaskSet | None = None,
    end_of_epoch: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] = print,
    desc: str = "trannsformer",
    checkpoint: str | Path | None = None,
    state: Resumable | None = None,
) -> TrainHistory:
    """SGD (lr, momentum, batch of ``p``) for ``epochs`` epochs; no gradient masking unless
    ``masks`` is given (then pruned weights stay zero). ``end_of_epoch(epoch, loss)`` runs
    after each epoch with the full-batch training loss measured before it.

    With ``checkpoint``, the model, the optimizer, the history and ``state`` (what
    ``end_of_epoch`` changes) are written there atomically after every epoch, and a run that
    finds the file resumes after its last epoch: the result equals an uninterrupted run's
    (each epoch's shuffle is seeded by the epoch alone). The file records the parameters,
    seed and stage it belongs to; a checkpoint of another run is refused, never mixed in.
    The history's ``resumed_s`` sums the recorded seconds of the epochs loaded from it."""
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum)
    hist: list[dict] = []
    ds = data.dataset if isinstance(data, DataLoader) else data
    ckpt = Path(checkpoint) if checkpoint is not None else None
    owner = json.dumps(
        {"params": dataclasses.asdict(p), "epochs": epochs, "seed": seed, "desc": desc,
         "masked": masks is not None}, sort_keys=True, default=str,
    )  # fmt: skip
    start, resumed_s = 1, 0.0
    resumed = load_epoch_checkpoint(ckpt, model, opt, device, owner=owner, what=desc)
    if resumed is not None:  # epochs are 1-based here (``nntrain.m``)
        done, loaded, ck = resumed
        hist, resumed_s, start = [dict(h) for h in loaded.epochs], loaded.resumed_s, done + 1
        if state is not None:
            state.load_state_dict(ck["state"])
        log(f"  {desc}: resumed after epoch {done}/{epochs} ({Path(str(checkpoint)).name})")
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed * 7919 + epoch)
        loader = DataLoader(ds, batch_size=p.batch_size, shuffle=True, generator=gen)
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = _loss(model(x), y, p.loss)
            if not torch.isfinite(loss.detach()):
                raise CompressionError(
                    f"trannsformer: the training loss became {float(loss.detach())} in epoch "
                    f"{epoch}; "
                    f"lower method.params.lr (= {p.lr:g}) or use method.params.loss: ce"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if masks is not None:
                masks.mask_grads(model)
            opt.step()
            if masks is not None:
                masks.apply(model, opt)
        t_sgd = time.perf_counter() - t0
        full = full_batch_loss(model, ds, p.loss, device)
        t1 = time.perf_counter()
        if end_of_epoch is not None:
            end_of_epoch(epoch, full)
        rec = {
            "epoch": epoch,
            "loss": full,
            "sgd_s": round(t_sgd, 2),
            "prune_s": round(time.perf_counter() - t1, 2),
            # the whole epoch (SGD, full-batch loss, prune/cluster): what a resumed run
            # counts for the epochs an earlier invocation ran
            "seconds": round(time.perf_counter() - t0, 2),
        }
        hist.append(rec)
        if ckpt is not None:
            save_epoch_checkpoint(
                ckpt, epoch, model, opt, hist, owner=owner,
                state=state.state_dict() if state is not None else {},
            )  # fmt: skip
        log(
            f"  {desc} epoch {epoch}/{epochs}: loss {full:.4f} "
            f"({rec['sgd_s']:.1f} s SGD, {rec['prune_s']:.1f} s prune/cluster)"
        )
    return TrainHistory(hist, resumed_s)


@dataclass
class TraNNsformerRun:
    """The outcome of :func:`run_trannsformer`: final layer states and per-epoch history."""

    states: list[LayerState]
    history: list[dict]
    xbar: int
    params: TraNNsformerParams
    #: seconds of its epochs that an earlier, interrupted invocation ran (from the checkpoints)
    resumed_s: float = 0.0

    @classmethod
    def from_info(cls, model: nn.Module, info: dict, params: TraNNsformerParams) -> TraNNsformerRun:
        """The run as :meth:`info` recorded it, on its trained ``model``: the layer states
        with their valid clusters (blocks read from the model's non-zero weights), no history.
        Enough to map or count it again (:func:`trannsformer_layout`, :func:`code_counts`)."""
        from xbarprune.compress.parts.scic import Cluster

        mods = dict(model.named_modules())
        states = []
        for name, clusters in info["clusters"].items():
            m = mods[name]
            mask = (m.weight.detach() != 0).reshape(m.weight.shape[0], -1).cpu()
            states.append(LayerState(name, m, clusters=[Cluster.from_dict(c, mask)
                                                        for c in clusters]))  # fmt: skip
        return cls(states, [], int(info["xbar"]), params)

    def info(self) -> dict:
        return {
            "xbar": self.xbar,
            "cluster_epoch": self.params.cluster_epoch,
            "cluster_prune_epoch": self.params.cluster_prune_epoch,
            "layers": {L.name: L.stats() for L in self.states},
            "clusters": {L.name: [c.to_dict() for c in L.valid] for L in self.states},
            "history": self.history,
        }


def resolve_xbar(p: TraNNsformerParams, crossbar: CrossbarSpec | None) -> int:
    if p.xbar is not None:
        return check_size(p.xbar)
    if crossbar is None:
        raise CompressionError("trannsformer: give params.xbar (no crossbar in the context)")
    return check_size(min(crossbar.rows, crossbar.weights_per_row))


@dataclass
class _IntegratedTraining:
    """What the integrated training's epoch ends change beside the weights (``prunewt.m``,
    ``cluster_prune.m`` and the schedule of theta and f): the layer states, the clustering's
    random generator, the previous epoch's loss and the per-epoch statistics."""

    p: TraNNsformerParams
    xbar: int
    states: list[LayerState]
    gen: torch.Generator
    device: Any
    prev: float
    extra: list[dict] = field(default_factory=list)

    def end_of_epoch(self, epoch: int, loss: float) -> None:
        p, states = self.p, self.states
        cp_on = p.mode == "trannsformer" and epoch >= p.cluster_prune_epoch
        with torch.no_grad():
            for L in states:
                prune_layer(L, epoch, p, self.xbar, self.gen)
                if cp_on:
                    cluster_prune(L, p)
        improved = loss < self.prev
        if improved and p.mode != "dense":
            for L in states:
                L.theta += L.rate
                if cp_on:
                    L.cp_factor += p.cp_step
        self.prev = loss
        self.extra.append(
            {
                "improved": improved,
                **{
                    f"{L.name}.{k}": v
                    for L in states
                    for k, v in L.stats().items()
                    if k in ("density", "clusters", "unclustered_of_remaining", "theta")
                },
            }
        )

    def state_dict(self) -> dict:
        return {
            "layers": {L.name: L.state_dict() for L in self.states},
            "generator": self.gen.get_state(),
            "prev": self.prev,
            "extra": self.extra,
        }

    def load_state_dict(self, d: dict) -> None:
        if list(d["layers"]) != [L.name for L in self.states]:
            raise CheckpointError(
                f"the checkpoint's layers {list(d['layers'])} are not this run's "
                f"{[L.name for L in self.states]}; delete it to start afresh"
            )
        for L in self.states:
            L.load_state_dict(d["layers"][L.name], self.device)
        self.gen.set_state(d["generator"].cpu())
        self.prev = float(d["prev"])
        self.extra = [dict(e) for e in d["extra"]]


def run_trannsformer(
    model: nn.Module,
    train_data,
    p: TraNNsformerParams,
    *,
    xbar: int,
    device="cpu",
    seed: int = 0,
    log: Callable[[str], None] = print,
    checkpoint_dir: str | Path | None = None,
) -> TraNNsformerRun:
    """Integrated training of ``model`` in place (``nntrain.m``), then ``drop`` if asked.

    With ``checkpoint_dir``, both trainings (``trannsformer.pt``, ``trannsformer_drop.pt``)
    checkpoint every epoch and resume where an interrupted run stopped, with the result of an
    uninterrupted one (:func:`train_epochs`)."""
    xbar = check_size(xbar)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    run = _IntegratedTraining(
        p,
        xbar,
        init_states(model, p, xbar),
        torch.Generator().manual_seed(int(seed) + 104729),
        device,
        1.0 if p.loss == "mse" else math.inf,
    )
    h = train_epochs(
        model,
        train_data,
        p,
        p.epochs,
        device=device,
        seed=seed,
        end_of_epoch=run.end_of_epoch,
        log=log,
        checkpoint=ckdir / "trannsformer.pt" if ckdir is not None else None,
        state=run,
    )
    hist, resumed_s = h.epochs, h.resumed_s
    for rec, e in zip(hist, run.extra, strict=True):
        rec.update(e)
    states = run.states
    if p.mode == "trannsformer" and p.unclustered == "drop":
        drop_unclustered(states)
        masks = MaskSet({L.name: L.module.weight.detach() != 0 for L in states})
        if p.drop_epochs > 0:
            h = train_epochs(
                model,
                train_data,
                p,
                p.drop_epochs,
                device=device,
                seed=seed + 1,
                masks=masks,
                log=log,
                desc="trannsformer drop fine-tune",
                checkpoint=ckdir / "trannsformer_drop.pt" if ckdir is not None else None,
            )
            hist, resumed_s = hist + h.epochs, resumed_s + h.resumed_s
    return TraNNsformerRun(states, hist, xbar, p, resumed_s)


@torch.no_grad()
def drop_unclustered(states: Sequence[LayerState]) -> None:
    """Zero every weight outside the valid cluster blocks (the code's ``mask_unclustered.m``)."""
    for L in states:
        cm = cluster_map(L.shape, L.clusters).to(L.weight.device)
        L.weight.mul_(cm)


# ------------------------------------------------------------------------------ mapping
@dataclass
class _Piece:
    ins: Tensor  # sorted input indices
    outs: Tensor  # sorted output indices
    cells: Tensor  # (len(outs), len(ins)) bool: cells it holds


def _block(ins: Tensor, outs: Tensor, cells: Tensor) -> Block:
    """(out, in)-oriented piece -> mapped-matrix Block (rows = inputs, cols = outputs)."""
    mask = cells.t().contiguous()
    return Block(ins.clone(), outs.clone(), None if bool(mask.all()) else mask)


def _split(piece: _Piece, rows: int, cols: int) -> list[_Piece]:
    out = []
    for a in range(0, len(piece.ins), rows):
        for b in range(0, len(piece.outs), cols):
            c = piece.cells[b : b + cols, a : a + rows]
            if bool(c.any()):
                out.append(_Piece(piece.ins[a : a + rows], piece.outs[b : b + cols], c))
    return out


def _trim(piece: _Piece) -> _Piece:
    r = piece.cells.any(1)
    c = piece.cells.any(0)
    return _Piece(piece.ins[c], piece.outs[r], piece.cells[r][:, c])


def pack_pieces(pieces: list[_Piece], rows: int, cols: int) -> list[_Piece]:
    """First-fit-decreasing bin packing of pieces into crossbars of ``rows`` inputs x ``cols``
    outputs: a bin takes a piece when the union of their inputs fits ``rows`` and of their
    outputs ``cols`` (shared neurons share a row / column; the cells stay disjoint)."""
    order = sorted(
        range(len(pieces)),
        key=lambda i: (-max(len(pieces[i].ins) / rows, len(pieces[i].outs) / cols), i),
    )
    bins: list[dict] = []
    for i in order:
        pc = pieces[i]
        pi, po = set(pc.ins.tolist()), set(pc.outs.tolist())
        for b in bins:
            if len(b["i"] | pi) <= rows and len(b["o"] | po) <= cols:
                b["i"] |= pi
                b["o"] |= po
                b["p"].append(pc)
                break
        else:
            bins.append({"i": set(pi), "o": set(po), "p": [pc]})
    out = []
    for b in bins:
        ins = torch.tensor(sorted(b["i"]), dtype=torch.long)
        outs = torch.tensor(sorted(b["o"]), dtype=torch.long)
        pos_i = {v: j for j, v in enumerate(ins.tolist())}
        pos_o = {v: j for j, v in enumerate(outs.tolist())}
        cells = torch.zeros(len(outs), len(ins), dtype=torch.bool)
        for pc in b["p"]:
            oi = torch.tensor([pos_o[v] for v in pc.outs.tolist()], dtype=torch.long)
            ii = torch.tensor([pos_i[v] for v in pc.ins.tolist()], dtype=torch.long)
            sub = cells[oi.view(-1, 1), ii.view(1, -1)]
            if bool((sub & pc.cells).any()):
                raise CompressionError("pack_pieces: two pieces hold the same cell")
            cells[oi.view(-1, 1), ii.view(1, -1)] = sub | pc.cells
        out.append(_Piece(ins, outs, cells))
    return out


def layer_blocks(
    W: Tensor,
    clusters: Sequence[Cluster],
    crossbar: CrossbarSpec,
    unclustered: str,
    pack: bool = False,
) -> tuple[list[Block], dict]:
    """Blocks of one transformed layer: valid clusters, then its unclustered synapses.

    ``W`` is the (out, in) weight. Returns the blocks (mapped-matrix orientation) and counts.
    """
    if unclustered not in UNCLUSTERED:
        raise CompressionError(f"unknown unclustered mapping {unclustered!r}: {UNCLUSTERED}")
    rows, cols = crossbar.rows, crossbar.weights_per_row
    W = W.detach().cpu()
    owned = torch.zeros(W.shape, dtype=torch.bool)
    cl_pieces: list[_Piece] = []
    for c in clusters:
        if not c.valid:
            continue
        idx = (c.outputs.view(-1, 1), c.inputs.view(1, -1))
        cells = ~owned[idx]
        if not bool(cells.any()):
            continue  # fully inside earlier clusters
        owned[idx] = True
        cl_pieces.append(_Piece(c.inputs, c.outputs, cells))
    U = (W != 0) & ~owned
    un_pieces: list[_Piece] = []
    if bool(U.any()):
        if unclustered == "drop":
            raise CompressionError(
                f"{int(U.sum())} non-zero weights lie outside every cluster; 'drop' needs them "
                "zeroed (drop_unclustered) before mapping"
            )
        if unclustered == "compact":
            r_any, c_any = U.any(1), U.any(0)
            oo, ii = r_any.nonzero().flatten(), c_any.nonzero().flatten()
            un_pieces.append(_Piece(ii, oo, U[r_any][:, c_any]))
        else:  # greedy windows (code): cols x rows windows on the (out, in) mask
            for r0, c0, taken in _windows(U, cols, rows):
                oo = torch.arange(r0, r0 + taken.shape[0])
                ii = torch.arange(c0, c0 + taken.shape[1])
                pc = _Piece(ii, oo, taken)
                un_pieces.append(_trim(pc) if unclustered == "pack" else pc)
    n_cluster_tiles = sum(crossbar.tiles(len(pc.ins), len(pc.outs)) for pc in cl_pieces)
    if pack:
        cl_pieces = pack_pieces([s for pc in cl_pieces for s in _split(pc, rows, cols)], rows, cols)
    if unclustered == "pack":
        un_pieces = pack_pieces(un_pieces, rows, cols)
    blocks = [_block(pc.ins, pc.outs, pc.cells) for pc in cl_pieces + un_pieces]
    info = {
        "cluster_blocks": len(cl_pieces),
        "cluster_crossbars_unpacked": n_cluster_tiles,
        "cluster_crossbars": sum(b.tiles(crossbar) for b in blocks[: len(cl_pieces)]),
        "unclustered_synapses": int(U.sum()),
        "unclustered_crossbars": sum(b.tiles(crossbar) for b in blocks[len(cl_pieces) :]),
    }
    return blocks, info


def _windows(U: Tensor, size_out: int, size_in: int):
    if size_out == size_in:
        return greedy_windows(U, size_in)
    # rectangular crossbars: same raster scan with a size_out x size_in window
    M = U.clone().numpy()
    out = []
    for r in range(M.shape[0]):
        while M[r].any():
            c = int(M[r].argmax())
            win = M[r : r + size_out, c : c + size_in]
            out.append((r, c, torch.from_numpy(win.copy())))
            win[:] = False
    return out


def trannsformer_layout(
    model: nn.Module,
    run: TraNNsformerRun,
    crossbar: CrossbarSpec,
    *,
    unclustered: str | None = None,
    pack: bool | None = None,
    base: CrossbarLayout | None = None,
) -> tuple[CrossbarLayout, dict]:
    """The crossbar layout of a transformed model on ``crossbar`` (e.g. X x X, or the code's
    4 x 4 count): transformed layers as cluster + unclustered blocks, every other mapped layer
    of ``base`` (default: every Linear/Conv2d) dense. ``prune_only`` / ``dense`` runs: each
    layer compacted (empty rows and columns dropped, tiled densely: the code's count)."""
    from xbarprune.mapping.layout import map_model

    p = run.params
    unclustered = p.unclustered if unclustered is None else unclustered
    pack = p.pack if pack is None else pack
    base = base if base is not None else map_model(model, crossbar)
    layers: dict[str, LayerLayout] = {}
    info: dict[str, dict] = {}
    states = {L.name: L for L in run.states}
    for lay in base:
        dense = LayerLayout(lay.name, lay.kind, lay.weight_shape, crossbar)
        if lay.name not in states:
            layers[lay.name] = dense
            continue
        L = states[lay.name]
        W = L.weight
        nz = (W != 0).cpu()
        r, c = nz.any(1), nz.any(0)
        compact = [Block(c.nonzero().flatten(), r.nonzero().flatten())] if bool(nz.any()) else []
        if p.mode == "trannsformer":
            blocks, inf = layer_blocks(W, L.clusters, crossbar, unclustered, pack)
            if p.layer_fallback:
                n_cl = sum(b.tiles(crossbar) for b in blocks)
                n_co = sum(b.tiles(crossbar) for b in compact)
                inf["fallback"] = n_co < n_cl
                if n_co < n_cl:
                    blocks = compact
                    inf.update(compact_rows=int(c.sum()), compact_cols=int(r.sum()))
        else:
            blocks = compact
            inf = {"compact_rows": int(c.sum()), "compact_cols": int(r.sum())}
        if not blocks:  # an all-zero layer keeps one 1x1 block (one tile)
            blocks = [Block(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))]
        layers[lay.name] = dense.with_blocks(blocks)
        info[lay.name] = inf
    return CrossbarLayout(crossbar, layers), info


def code_counts(run: TraNNsformerRun, g: int) -> dict:
    """The code's own counts (``get_hardware_params.m``) at granularity g: dense, compacted
    (pruned) and TraNNsformer (valid clusters + greedy / compact unclustered), summed over the
    transformed layers; no tile is freed, overlaps counted twice (as the code does)."""
    g = check_size(g, "count granularity")
    out = {"dense": 0, "compact_pruned": 0, "clusters": 0, "greedy": 0, "compact": 0}
    for L in run.states:
        W = L.weight.detach().cpu()
        out["dense"] += dense_count(L.shape, g)
        out["compact_pruned"] += compact_count(W != 0, g)
        valid = L.valid
        out["clusters"] += sum(c.crossbars(g) for c in valid)
        U = (W != 0) & ~cluster_map(L.shape, valid)
        out["greedy"] += len(greedy_windows(U, g))
        out["compact"] += compact_count(U, g)
    return out


# ------------------------------------------------------------------------------ the method
@register
class TraNNsformer(Method[TraNNsformerParams]):
    name = "trannsformer"
    summary = (
        "TraNNsformer (Ankit et al. 2017): magnitude pruning + size-constrained spectral "
        "clustering in training, clusters mapped one per crossbar block"
    )
    Params = TraNNsformerParams

    def compress(self, ctx: CompressContext) -> CompressResult:
        p: TraNNsformerParams = self.params
        xbar = resolve_xbar(p, ctx.layout.crossbar)
        seed = ctx.seed if p.seed is None else p.seed
        t0 = time.perf_counter()
        run = run_trannsformer(
            ctx.model, ctx.train_data, p, xbar=xbar, device=ctx.device, seed=seed, log=ctx.log,
            checkpoint_dir=ctx.checkpoint_dir,
        )  # fmt: skip
        ctx.resumed_s += run.resumed_s
        layout, minfo = trannsformer_layout(ctx.model, run, ctx.layout.crossbar, base=ctx.layout)
        masks = MaskSet({L.name: L.module.weight.detach() != 0 for L in run.states})
        info = run.info()
        info["mapping"] = minfo
        info["code_counts"] = {"g=X": code_counts(run, xbar), "g=4": code_counts(run, 4)}
        info["seconds"] = round(time.perf_counter() - t0, 1)
        return CompressResult(masks=masks, layout=layout, info=plain_info(info))
