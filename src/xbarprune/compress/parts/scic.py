"""Size-constrained iterative spectral clustering (SCIC) of a layer's connectivity.

A. Ankit, A. Sengupta, K. Roy, "TraNNsformer: Neural Network Transformation for Memristive
Crossbar based Neuromorphic System Design", ICCAD 2017 (arXiv 1708.07949), Algorithms 1-2, as
the authors' MATLAB code implements them (``cluster.m``, ``subcluster.m``,
``size_constrained_cluster.m``, ``map_unclustered.m``); docs/methods/trannsformer.md lists every
constant and every place we differ from the code.

Pure functions on bool connectivity masks in the ``nn.Linear.weight`` layout ``(out, in)``
(the code's layout): a node is an input neuron (column) or an output neuron (row); the graph is
the bipartite adjacency ``S = [[0, C^T], [C, 0]]``, inputs first.

* :func:`spectral_embedding`: the k eigenvectors of the random-walk Laplacian
  ``L_rw = I - D^-1 S`` with the smallest eigenvalues (the code's ``eigs(D^-1 (D - S), k, 0)``),
  unit 2-norm columns, rows not normalised. Computed exactly from the SVD of the normalised
  bi-adjacency ``A = D_out^-1/2 C D_in^-1/2`` (Dhillon's co-clustering identity: the k smallest
  eigenvalues of L_sym are ``1 - sigma_i`` for the top k singular triples, eigenvector
  ``[v_i; u_i]``, and ``L_rw``'s eigenvectors are ``D^-1/2`` times ``L_sym``'s); a dense
  eigendecomposition when fewer than k singular triples exist.
* :func:`kmeans`: k-means++ seeding from a ``torch.Generator``, one replicate, an empty
  cluster re-seeded with the point farthest from its centre (MATLAB ``'EmptyAction',
  'singleton'``); None when fewer than k distinct points exist (MATLAB's kmeans errors there).
* :func:`sc_pass` (``cluster.m``): repeated SC on the remaining connectivity; a cluster is kept
  iff its quality (density of its block) is **strictly** above q and both sides are non-empty;
  kept blocks are removed and the loop ends when a pass keeps nothing. The code's index bug
  (positions in the trimmed node list used as neuron indices) is **fixed**: members are mapped
  back through the kept node indices.
* :func:`scic` (``size_constrained_cluster.m`` + ``subcluster.m``): clusters violating the size
  rule are re-clustered on their own block until none does; an unsplittable cluster stays
  (status 0); a parent none of whose sub-clusters reaches q disappears (code behaviour); a
  no-progress guard (a sub-cluster with its parent's node sets, or ``max_rounds``) ends the
  loop, which the code lacks.
* Counting: :func:`dense_count`, :func:`compact_count` (drop empty rows and columns, tile
  densely: the code's pruned-network count), :func:`greedy_windows` (``map_unclustered.m``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from xbarprune.errors import CompressionError

SizeRule = Literal["sum", "dims"]


@dataclass
class Cluster:
    """One cluster: a set of input and output neurons of a layer.

    ``inputs`` / ``outputs``: column / row indices of the ``(out, in)`` mask (sorted);
    ``quality``: block density at formation (0.0 = invalidated by cluster pruning);
    ``block``: the block's connectivity at formation, ``(len(outputs), len(inputs))``;
    ``status``: 1 = meets the size rule, 0 = could not be split (may be oversize);
    ``level``: the quality threshold it was accepted at; ``epoch``: the epoch it formed.
    """

    inputs: Tensor
    outputs: Tensor
    quality: float
    block: Tensor
    status: int = 1
    level: float = 0.0
    epoch: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.quality != 0.0

    @property
    def shape(self) -> tuple[int, int]:
        """(inputs, outputs): rows x columns of its block on the crossbar."""
        return len(self.inputs), len(self.outputs)

    def crossbars(self, size: int) -> int:
        """``ceil(|in| / X) * ceil(|out| / X)``: tiles of its block on X x X crossbars."""
        return math.ceil(len(self.inputs) / size) * math.ceil(len(self.outputs) / size)

    def to_dict(self) -> dict:
        return {
            "inputs": self.inputs.tolist(),
            "outputs": self.outputs.tolist(),
            "quality": float(self.quality),
            "status": int(self.status),
            "level": float(self.level),
            "epoch": int(self.epoch),
        }

    @classmethod
    def from_dict(cls, d: dict, mask: Tensor | None = None) -> Cluster:
        ins = torch.tensor(d["inputs"], dtype=torch.long)
        outs = torch.tensor(d["outputs"], dtype=torch.long)
        block = (
            mask[outs][:, ins].clone()
            if mask is not None
            else torch.ones(len(outs), len(ins), dtype=torch.bool)
        )
        return cls(ins, outs, d["quality"], block, d["status"], d["level"], d["epoch"])

    def state_dict(self) -> dict:
        """Everything the cluster holds, its formation block included (:meth:`to_dict` keeps
        the JSON-friendly part only): what a training checkpoint stores to resume exactly.
        ``on_cpu`` records where its tensors lived (a CUDA run keeps some on the device)."""
        return {
            "inputs": self.inputs.cpu(),
            "outputs": self.outputs.cpu(),
            "quality": float(self.quality),
            "block": self.block.cpu(),
            "status": int(self.status),
            "level": float(self.level),
            "epoch": int(self.epoch),
            "meta": dict(self.meta),
            "on_cpu": self.inputs.device.type == "cpu",
        }

    @classmethod
    def from_state_dict(cls, d: dict, device: torch.device | str = "cpu") -> Cluster:
        """The cluster :meth:`state_dict` stored; tensors that were not on the CPU go to
        ``device`` (the run's)."""
        where = "cpu" if d["on_cpu"] else device
        return cls(
            d["inputs"].long().to(where),
            d["outputs"].long().to(where),
            float(d["quality"]),
            d["block"].bool().to(where),
            int(d["status"]),
            float(d["level"]),
            int(d["epoch"]),
            dict(d["meta"]),
        )


def check_size(size: int, what: str = "crossbar size") -> int:
    if isinstance(size, bool) or int(size) != size or size < 2:
        raise CompressionError(f"{what} = {size!r}; allowed: an integer >= 2")
    return int(size)


def fits(c: Cluster, size: int, rule: SizeRule = "sum", mult: int = 2) -> bool:
    """The size rule. ``sum`` (code): ``|in| + |out| <= mult * X``; ``dims``: both <= X."""
    a, b = c.shape
    if rule == "sum":
        return a + b <= mult * size
    if rule == "dims":
        return a <= size and b <= size
    raise CompressionError(f"unknown size rule {rule!r}; allowed: 'sum', 'dims'")


# ------------------------------------------------------------------------------ spectral step
def spectral_embedding(B: Tensor, k: int) -> Tensor:
    """Bi-adjacency ``B`` (n_out, n_in), no empty row or column -> ``Z`` (n_in + n_out, k).

    Column j = eigenvector of ``L_rw = I - D^-1 S`` for the j-th smallest eigenvalue, unit
    2-norm; rows: inputs first, then outputs.
    """
    B = B.to(torch.float64)
    n_out, n_in = B.shape
    d_in, d_out = B.sum(0), B.sum(1)
    if bool((d_in == 0).any()) or bool((d_out == 0).any()):
        raise CompressionError("spectral_embedding: the bi-adjacency has an empty row or column")
    dsq = torch.cat([d_in, d_out]).sqrt()
    if min(n_in, n_out) >= k:
        A = B / d_out.sqrt()[:, None] / d_in.sqrt()[None, :]
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        Z = torch.cat([Vh[:k].t(), U[:, :k]], 0)  # L_sym eigenvectors [v; u] (unnormalised)
    else:
        n = n_in + n_out
        S = torch.zeros(n, n, dtype=torch.float64)
        S[n_in:, :n_in] = B
        S[:n_in, n_in:] = B.t()
        L = torch.eye(n, dtype=torch.float64) - S / dsq[:, None] / dsq[None, :]
        _, vecs = torch.linalg.eigh(L)
        Z = vecs[:, :k]
    Z = Z / dsq[:, None]
    return Z / Z.norm(dim=0, keepdim=True).clamp_min(1e-300)


def kmeans(Z: Tensor, k: int, generator: torch.Generator, iters: int = 100) -> Tensor | None:
    """Labels (n,) of k-means on the rows of ``Z``; None if fewer than k distinct rows."""
    n = Z.shape[0]
    if n < k or len(torch.unique(Z.round(decimals=10), dim=0)) < k:
        return None
    # k-means++ seeding
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [Z[first]]
    d2 = ((Z - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        tot = float(d2.sum())
        if tot <= 0:
            return None
        j = int(torch.multinomial(d2 / tot, 1, generator=generator))
        centres.append(Z[j])
        d2 = torch.minimum(d2, ((Z - Z[j]) ** 2).sum(1))
    C = torch.stack(centres)
    lab = None
    for _ in range(iters):
        dist = torch.cdist(Z, C)
        new = dist.argmin(1)
        for j in range(k):  # empty cluster: the point farthest from its centre
            if not bool((new == j).any()):
                far = int(dist.gather(1, new.view(-1, 1)).squeeze(1).argmax())
                new[far] = j
        if lab is not None and torch.equal(new, lab):
            break
        lab = new
        onehot = torch.zeros(n, k, dtype=Z.dtype)
        onehot[torch.arange(n), lab] = 1.0
        C = (onehot.t() @ Z) / onehot.sum(0).view(-1, 1)
    return lab


# ------------------------------------------------------------------------------ SCIC
def sc_pass(C: Tensor, q: float, k: int, generator: torch.Generator) -> tuple[list[Cluster], int]:
    """``cluster.m``: SC passes on ``C`` (out, in) until one keeps no cluster.

    Returns the clusters kept (quality > q, strict) and a status: 0 if SC failed (too few
    nodes or distinct embedded points) before the connectivity was exhausted.
    """
    C = C.clone().bool()
    out: list[Cluster] = []
    status = 1
    prev = -1
    while bool(C.any()):
        nnz = int(C.sum())
        if nnz == prev:
            break  # the last pass kept nothing
        prev = nnz
        ii = C.any(0).nonzero().flatten()
        oo = C.any(1).nonzero().flatten()
        if len(ii) + len(oo) <= k:
            status = 0
            break
        Z = spectral_embedding(C[oo][:, ii], k)
        lab = kmeans(Z, k, generator)
        if lab is None:
            status = 0
            break
        for j in range(k):
            m = lab == j
            cin = ii[m[: len(ii)]]  # original neuron indices (fixes the code's index bug)
            cout = oo[m[len(ii) :]]
            if len(cin) == 0 or len(cout) == 0:
                continue
            blk = C[cout][:, cin]
            Q = float(blk.float().mean())
            if q < Q:
                out.append(Cluster(cin, cout, Q, blk.clone(), 1, q))
                C[cout.view(-1, 1), cin.view(1, -1)] = False
    return out, status


def scic(
    C: Tensor,
    q: float,
    size: int,
    *,
    k: int = 5,
    rule: SizeRule = "sum",
    mult: int = 2,
    generator: torch.Generator,
    max_rounds: int = 50,
    split_failure: Literal["parent", "found"] = "parent",
) -> list[Cluster]:
    """``size_constrained_cluster.m``: SC on ``C``, then split every cluster that breaks the
    size rule on its own block (same q) until none does (see module docstring).

    ``split_failure``: when SC fails part-way through a split (too few nodes left), ``parent``
    keeps the oversize parent (code: status 0 from ``cluster.m``), ``found`` keeps the
    sub-clusters found before the failure (the rest of the parent becomes unclustered)."""
    size = check_size(size)
    if k < 2:
        raise CompressionError(f"k = {k!r}; allowed: an integer >= 2")
    clusters, _ = sc_pass(C, q, k, generator)
    for _ in range(max_rounds):
        if not any(c.status == 1 and not fits(c, size, rule, mult) for c in clusters):
            break
        nxt: list[Cluster] = []
        for c in clusters:
            if c.status == 0 or fits(c, size, rule, mult):
                nxt.append(c)
                continue
            sub, st = sc_pass(c.block, q, k, generator)
            same = any(s.shape == c.shape for s in sub)
            if same or (st == 0 and (split_failure == "parent" or not sub)):
                c.status = 0  # cannot split: keep it (oversize)
                nxt.append(c)
                continue
            for s in sub:  # no sub-cluster at q: the parent is dropped (code behaviour)
                nxt.append(
                    Cluster(c.inputs[s.inputs], c.outputs[s.outputs], s.quality, s.block, 1, q)
                )
        clusters = nxt
    else:
        for c in clusters:
            if c.status == 1 and not fits(c, size, rule, mult):
                c.status = 0
    return clusters


def cluster_map(shape: tuple[int, int], clusters: list[Cluster], only_valid: bool = True) -> Tensor:
    """(out, in) bool: union of the cluster blocks (``cluster_createmap.m``)."""
    m = torch.zeros(shape, dtype=torch.bool)
    for c in clusters:
        if c.valid or not only_valid:
            m[c.outputs.view(-1, 1), c.inputs.view(1, -1)] = True
    return m


# ------------------------------------------------------------------------------ counting
def dense_count(shape: tuple[int, int], size: int) -> int:
    """``ceil(in / X) * ceil(out / X)`` for an (out, in) matrix."""
    return math.ceil(shape[1] / size) * math.ceil(shape[0] / size)


def compact_count(mask: Tensor, size: int) -> int:
    """Drop all-zero rows and columns, tile the rest densely (code's pruned-network count)."""
    if not bool(mask.any()):
        return 0
    return math.ceil(int(mask.any(0).sum()) / size) * math.ceil(int(mask.any(1).sum()) / size)


def greedy_windows(mask: Tensor, size: int) -> list[tuple[int, int, Tensor]]:
    """``map_unclustered.m``: raster scan of the (out, in) mask; at the first remaining 1 at
    (r, c) place a ``size x size`` window with its top-left corner there (clipped at the edge),
    take the remaining 1s in it, continue. Returns ``(r, c, taken)`` per window, ``taken`` the
    (out, in) bool block of the synapses it holds (shape of the clipped window)."""
    U = mask.clone().bool().numpy()
    out = []
    for r in range(U.shape[0]):
        row = U[r]
        while row.any():
            c = int(row.argmax())
            win = U[r : r + size, c : c + size]
            out.append((r, c, torch.from_numpy(win.copy())))
            win[:] = False
    return out
