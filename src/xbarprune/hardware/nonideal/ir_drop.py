"""Wire resistance (IR drop): effective conductances of a resistive crossbar.

Geometry (the linear RxNN / GENIEx abstraction; Jain et al., "RxNN", IEEE TCAD 2020;
Chakraborty et al., "GENIEx", DAC 2020). Rows ``i = 0..R-1`` run top to bottom, columns
``j = 0..C-1`` left to right; every row wire has nodes ``a[i, j]`` and every column wire nodes
``b[i, j]`` (one per cell)::

    V_i --r_source-- a[i,0] --r_row-- a[i,1] --r_row-- ... --r_row-- a[i,C-1]
                       |                |                               |
                    G[i,0]           G[i,1]        (cell between a[i,j] and b[i,j])
                       |                |
    b[0,j] --r_col-- b[1,j] --r_col-- ... --r_col-- b[R-1,j] --r_sink-- sense node j (0 V)

* each input drives its row from the **left** end through the driver/source resistance
  ``r_source``; ``r_row`` is the wire segment between two adjacent cells of a row (so the cell
  in column ``j`` sits ``j`` segments from the driver);
* each column is sensed at its **bottom** end through ``r_sink`` into a virtual ground (0 V);
  ``r_col`` is the segment between two adjacent cells of a column (the cell in row ``i`` sits
  ``R - 1 - i`` segments above the sense end);
* there are no wire segments outside the array: a 1x1 crossbar is
  ``I = V / (r_source + 1/G + r_sink)``.

A zero resistance is an ideal connection (a zero ``r_source`` fixes ``a[i,0] = V_i``, a zero
``r_row`` merges a row into one node, and likewise for columns); all four zero gives back
``G`` exactly.

The circuit is linear, so the sensed currents are exactly ``I = G_eff^T V`` with an
input-independent matrix ``G_eff[i, j]`` = current into sense node ``j`` when ``V_i = 1 V`` and
every other input is 0 V (undriven rows are held at 0 V through their drivers; their cells
still form sneak paths). Feeding ``G_eff`` to the ideal decode gives the effective weights.

Solvers (all float64, batched over tiles):

* ``effective_conductance(method="direct")`` (default) - exact block elimination. For fixed
  column-node voltages every row wire is a tridiagonal system, so each row's node voltages
  are an affine function of its column-node voltages (one batched Thomas solve of the ``C``
  unit shunt potentials gives the ``C x C`` response). Substituting it into Kirchhoff's law
  at the column nodes leaves a block-tridiagonal system over the rows (``C x C`` symmetric
  positive definite blocks, the column wire segments coupling neighbouring rows), whose
  forward block elimination (Cholesky per block) runs from the top row down to the sense
  row for all ``R`` unit inputs at once; the sense-row voltages are the sensed currents, so
  no back substitution is needed. Exact to float64 rounding (agrees with ``nodal`` to
  ~1e-13 relative), no tolerance, about ``R C^3`` flops per tile in dense batched linear
  algebra: on one CPU core ~13 ms per 64x64 tile, ~10x faster than ``iterative``
  (docs/benchmarks.md). Memory ``O(T R C^2)``, processed in chunks of tiles.
* :func:`nodal_solve` - dense modified nodal analysis: merge ideal (0-ohm) connections, stamp
  every resistor into the ``(<= 2 R C)``-square conductance matrix, ``torch.linalg.solve``.
  Exact; memory ``O((R C)**2)`` per tile, so for small tiles and validation.
* ``effective_conductance(method="iterative")`` - block (line) successive over-relaxation:
  with the column voltages fixed, every row wire is a tridiagonal system (and vice versa), and
  all rows of all tiles and all ``R`` unit inputs are solved at once by a batched Thomas
  algorithm with factors computed once. The first sweeps are plain Gauss-Seidel; the
  contraction ratio ``lambda`` they show estimates the squared spectral radius of block
  Jacobi, and the relaxation factor is then set per tile to Young's optimum
  ``omega = 2 / (1 + sqrt(1 - lambda))`` (the row/column splitting is 2-cyclic and consistently
  ordered). Sweeps stop when the largest node-voltage change of every tile is below ``tol``
  volts (for 1 V inputs). Exact to that tolerance; memory ``O(T R**2 C)``, processed in chunks
  of tiles. When both ``r_source`` and ``r_sink`` are non-zero every sweep is followed by an
  aggregation coarse-grid correction (:class:`_Coarse`: each row and each column wire lumped
  into one node, the ``R + C`` node circuit solved by Cholesky), which removes the global
  modes that made plain line relaxation slow at large driver/sense resistances (5-9 sweeps
  at the 1 kOhm ends of the ``ir_drop`` preset); the result is the same fixed point.
* ``effective_conductance(method="approx")`` - a one-pass closed form without iteration::

      G_eff[i, j] ~= alpha[i, j] * G[i, j] * beta[i, j]

  ``alpha``: voltage at ``a[i, j]`` for ``V_i = 1`` when every column node is held at 0 V (the
  row's own current sharing through ``r_source`` and the row segments); ``beta``: fraction of
  a current injected at ``b[i, j]`` that reaches the sense node when every row node is held at
  0 V (by reciprocity, the voltage at ``b[i, j]`` when the sense node is driven at 1 V; it
  includes the cell's own load and the leak through the other cells of the column). Both are
  one batched tridiagonal solve. It is exact when one side is ideal (``r_row = r_source = 0``
  or ``r_col = r_sink = 0``) and otherwise drops the row/column feedback and the sneak paths
  through undriven rows (second order in ``r * G`` for small driver/sense resistances).
  Largest error over ``G_eff`` relative to ``max |G_eff|``, measured against the exact solve
  on random tiles with G uniform in [1e-6, 1e-4] S (the tests pin the 16x16 values):

  ======  ==========================  ==========  ===============================
  tile    r_row, r_col, r_src, r_snk  approx err  IR effect (max |G_eff - G| / max G)
  ======  ==========================  ==========  ===============================
  16x16   2.5, 2.5, 0, 0              2.5e-4      4 %
  16x16   5, 10, 0, 0                 1.8e-3      12 %
  16x16   5, 10, 1k, 1k (preset)      0.15        72 %
  64x64   5, 10, 0, 0                 0.05        68 %
  64x64   5, 10, 0, 0 (*)             0.012       29 %
  ======  ==========================  ==========  ===============================

  (*) with G uniform in [4e-6, 2e-5] S (R_on = 50 kOhm, as in Bhattacharjee et al.'s RRAM).

  so "approx" suits weak IR drop (small tiles, low-conductance cells, ideal drivers); use
  "direct" otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal._checks import check_choice, check_int, check_nonneg
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage

IRMethod = Literal["direct", "iterative", "approx", "nodal"]
IR_METHODS: tuple[str, ...] = ("direct", "iterative", "approx", "nodal")

#: element budget of one chunk of the iterative solver's state tensors (T_chunk * R * R * C):
#: cache-sized on CPU (measured fastest), large on accelerators (fewer kernel launches).
CHUNK_ELEMENTS = 1 << 20
CHUNK_ELEMENTS_ACCEL = 1 << 25
#: element budget of one chunk of the direct solver (T_chunk * R * C * C).
DIRECT_CHUNK_ELEMENTS = 1 << 22


def _check_resistances(prefix: str, r_row, r_col, r_source, r_sink) -> None:
    check_nonneg(f"{prefix}.r_row", r_row)
    check_nonneg(f"{prefix}.r_col", r_col)
    check_nonneg(f"{prefix}.r_source", r_source)
    check_nonneg(f"{prefix}.r_sink", r_sink)


def _as_tiles(g: Tensor) -> tuple[Tensor, bool]:
    if g.dim() == 2:
        return g.unsqueeze(0), True
    if g.dim() != 3:
        raise SpecError(f"conductances must be (rows, cols) or (tiles, rows, cols), got {g.shape}")
    return g, False


# --------------------------------------------------------------------------- exact dense solve


def _build_netlist(R: int, C: int, r_row, r_col, r_source, r_sink):
    """Merge ideal wires; return class maps and the resistor list of the crossbar graph."""
    n_lab = 2 * R * C + R + C

    def A(i, j):
        return i * C + j

    def B(i, j):
        return R * C + i * C + j

    def S(i):
        return 2 * R * C + i

    def Sense(j):
        return 2 * R * C + R + j

    parent = list(range(n_lab))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    wires = []  # (label, label, resistance)
    for i in range(R):
        wires.append((S(i), A(i, 0), r_source))
        wires.extend((A(i, j), A(i, j + 1), r_row) for j in range(C - 1))
    for j in range(C):
        wires.extend((B(i, j), B(i + 1, j), r_col) for i in range(R - 1))
        wires.append((B(R - 1, j), Sense(j), r_sink))
    resistors = []
    for p, q, r in wires:
        if r == 0:
            parent[find(p)] = find(q)
        else:
            resistors.append((p, q, 1.0 / r))
    # class of every label: fixed (index into [v_0..v_{R-1}, 0]) or unknown (index)
    fixed: dict[int, int] = {}
    for i in range(R):
        fixed[find(S(i))] = i
    for j in range(C):
        fixed[find(Sense(j))] = R
    unknown: dict[int, int] = {}
    for x in range(n_lab):
        rx = find(x)
        if rx not in fixed and rx not in unknown:
            unknown[rx] = len(unknown)
    return find, fixed, unknown, resistors, A, B, Sense


def _spd_solve(K: Tensor, rhs: Tensor) -> Tensor:
    """Batched solve of symmetric positive definite systems (the nodal matrices are).

    Batched Cholesky, not ``torch.linalg.solve``: the CPU build of torch 2.13 (MKL) returns
    garbage or raises "Pivots given to lu_solve must all be >= 1" for a batched LU solve when
    more than one thread is used (found by tests/test_sparse_nonideal.py once another test had
    set 2 threads). A matrix that is not positive definite falls back to one LU solve per matrix.
    """
    L, info = torch.linalg.cholesky_ex(K)
    if not bool((info != 0).any()):
        return torch.cholesky_solve(rhs, L)
    return torch.stack([torch.linalg.solve(K[t], rhs[t]) for t in range(K.shape[0])])


def nodal_solve(
    g: Tensor,
    v: Tensor,
    r_row: float,
    r_col: float,
    r_source: float = 0.0,
    r_sink: float = 0.0,
) -> Tensor:
    """Sensed column currents of crossbars ``g`` for inputs ``v`` by dense nodal analysis.

    Args:
        g: cell conductances (T, R, C) or (R, C), siemens.
        v: input voltages (R,), (B, R) or (T, B, R), volts.
        r_row, r_col, r_source, r_sink: resistances in ohms (>= 0), geometry in the module
            docstring.

    Returns:
        float64 currents (T, B, C) in amperes, with the T / B axes dropped where ``g`` / ``v``
        had none. Exact (to float64 rounding); for small tiles (the dense system has up to
        ``2 R C`` unknowns per tile).
    """
    _check_resistances("nodal_solve", r_row, r_col, r_source, r_sink)
    g3, squeeze_t = _as_tiles(g)
    T, R, C = g3.shape
    g3 = g3.to(torch.float64)
    squeeze_b = v.dim() == 1
    vv = v.to(device=g3.device, dtype=torch.float64)
    if vv.dim() == 1:
        vv = vv.unsqueeze(0)
    if vv.dim() == 2:
        vv = vv.unsqueeze(0).expand(T, -1, -1)
    if vv.dim() != 3 or vv.shape[0] != T or vv.shape[-1] != R:
        raise SpecError(f"v must be (R,), (B, R) or (T, B, R) with R={R}, T={T}; got {v.shape}")
    Bn = vv.shape[1]
    v_ext = torch.cat([vv, torch.zeros(T, Bn, 1, dtype=vv.dtype, device=vv.device)], dim=-1)

    find, fixed, unknown, resistors, A, B, Sense = _build_netlist(
        R, C, r_row, r_col, r_source, r_sink
    )
    n = len(unknown)
    # element list: (end p, end q, conductance column) ; cells take their g per tile
    ends_p, ends_q, conds = [], [], []
    for p, q, c in resistors:
        ends_p.append(find(p))
        ends_q.append(find(q))
        conds.append(torch.full((T,), c, dtype=torch.float64, device=g3.device))
    cell_start = len(conds)
    for i in range(R):
        for j in range(C):
            ends_p.append(find(A(i, j)))
            ends_q.append(find(B(i, j)))
    cond = torch.cat(
        [torch.stack(conds, dim=1) if conds else g3.new_zeros(T, 0), g3.reshape(T, R * C)],
        dim=1,
    )  # (T, E)
    assert cond.shape[1] == len(ends_p) and cell_start == len(resistors)

    K = torch.zeros(T, n * n, dtype=torch.float64, device=g3.device)
    rhs = torch.zeros(T, n, Bn, dtype=torch.float64, device=g3.device)
    kk_idx, kk_sign, kk_edge = [], [], []
    rhs_node, rhs_fix, rhs_edge = [], [], []
    for e, (p, q) in enumerate(zip(ends_p, ends_q, strict=True)):
        if p == q:
            continue
        up, uq = unknown.get(p), unknown.get(q)
        for a, b_, fb in ((up, uq, fixed.get(q)), (uq, up, fixed.get(p))):
            if a is None:
                continue
            kk_idx.append(a * n + a)
            kk_sign.append(1.0)
            kk_edge.append(e)
            if b_ is not None:
                kk_idx.append(a * n + b_)
                kk_sign.append(-1.0)
                kk_edge.append(e)
            else:
                rhs_node.append(a)
                rhs_fix.append(fb)
                rhs_edge.append(e)
    dev = g3.device
    if kk_idx:
        vals = cond[:, kk_edge] * torch.tensor(kk_sign, dtype=torch.float64, device=dev)
        K.index_add_(1, torch.tensor(kk_idx, device=dev), vals)
    if rhs_node:
        contrib = cond[:, rhs_edge].unsqueeze(-1) * v_ext[:, :, rhs_fix].transpose(1, 2)
        rhs.index_add_(1, torch.tensor(rhs_node, device=dev), contrib)
    x = _spd_solve(K.view(T, n, n), rhs) if n else rhs  # (T, n, B)

    def volt(cls):  # (T, B)
        if cls in unknown:
            return x[:, unknown[cls], :]
        return v_ext[:, :, fixed[cls]]

    out = torch.zeros(T, Bn, C, dtype=torch.float64, device=dev)
    sense_cls = {find(Sense(j)): j for j in range(C)}
    for e, (p, q) in enumerate(zip(ends_p, ends_q, strict=True)):
        if p == q:
            continue
        for here, other in ((p, q), (q, p)):
            col = sense_cls.get(here)
            if col is not None and other not in sense_cls:
                out[:, :, col] += cond[:, e : e + 1] * (volt(other) - volt(here))
    if squeeze_b:
        out = out[:, 0]
    if squeeze_t:
        out = out[0]
    return out


# --------------------------------------------------------------------------- line systems


class _Lines:
    """A batch of resistive lines, position-first: shunts ``s`` of shape (n, *batch).

    The driven end (position 0, or position ``n - 1`` when ``rev``) is tied to a fixed
    potential through ``r_end`` (Dirichlet when 0); consecutive positions are joined by
    ``r_seg`` (one merged node when 0); position ``k`` is tied through the shunt ``s[k]`` to a
    known potential ``u[k]``. ``solve_(f, v_end)`` turns ``f = s * u`` into the node voltages
    in place (batched Thomas algorithm; the factors depend on ``s`` only and are computed
    once).
    """

    def __init__(self, s: Tensor, r_seg: float, r_end: float, rev: bool = False):
        self.s = s
        self.n = n = s.shape[0]
        self.rev = rev
        self.collapsed = r_seg == 0 or n == 1
        self.dirichlet = r_end == 0
        self.e = 0.0 if self.dirichlet else 1.0 / r_end
        self.w = 0.0 if r_seg == 0 else 1.0 / r_seg
        if self.collapsed:
            if not self.dirichlet:
                self.inv_tot = 1.0 / (self.e + s.sum(0))
            return
        w = self.w
        order = self.order
        first, last = order[0], order[-1]
        d = s + 2.0 * w
        d[last] = s[last] + w
        d[first] = 1.0 if self.dirichlet else s[first] + w + self.e
        cp = torch.empty_like(s)
        inv_den = torch.empty_like(s)
        inv_den[first] = 1.0 / d[first]
        cp[first] = (0.0 if self.dirichlet else -w) * inv_den[first]
        for prev, k in zip(order[:-1], order[1:], strict=True):
            inv_den[k] = 1.0 / (d[k] + w * cp[prev])
            cp[k] = -w * inv_den[k]
        # forward sweep y_k = f_k / den_k + (w / den_k) y_prev, back x_k = y_k - cp_k x_next
        self.inv_den = inv_den
        self.w_inv_den = w * inv_den
        self.neg_cp = -cp
        self.s_inv_den = s * inv_den
        if self.dirichlet:
            self.s_inv_den[first] = 0.0

    @property
    def order(self) -> list[int]:
        """Positions from the driven end to the far end."""
        return list(range(self.n - 1, -1, -1)) if self.rev else list(range(self.n))

    def solve_(self, f: Tensor, v_end) -> Tensor:
        """Overwrite ``f`` (n, *rhs_batch) with the node voltages for end potential ``v_end``."""
        if self.collapsed:
            if self.dirichlet:
                f.copy_(torch.as_tensor(v_end, dtype=f.dtype, device=f.device).expand_as(f))
                return f
            x = (f.sum(0) + self.e * v_end) * self.inv_tot
            f.copy_(x.unsqueeze(0).expand_as(f))
            return f
        return self._sweep_(f.mul_(self.inv_den), v_end)

    def solve_shunts(self, u: Tensor, v_end) -> Tensor:
        """Node voltages (new tensor) for shunt potentials ``u`` (n, *rhs_batch)."""
        if self.collapsed:
            return self.solve_(torch.mul(self.s, u), v_end)
        return self._sweep_(torch.mul(self.s_inv_den, u), v_end)

    def _sweep_(self, y: Tensor, v_end) -> Tensor:
        """Thomas sweeps on ``y = f / den`` (pre-scaled), in place."""
        order = self.order
        first = order[0]
        if self.dirichlet:
            y[first] = v_end
        elif isinstance(v_end, Tensor):
            y[first].add_(v_end * (self.e * self.inv_den[first]))
        elif v_end != 0:
            y[first].add_(self.inv_den[first], alpha=self.e * v_end)
        for prev, k in zip(order[:-1], order[1:], strict=True):
            y[k].addcmul_(self.w_inv_den[k], y[prev])
        for nxt, k in zip(order[:0:-1], order[-2::-1], strict=True):
            y[k].addcmul_(self.neg_cp[k], y[nxt])
        return y


def _row_lines(g: Tensor, r_row: float, r_source: float, unsq: bool) -> _Lines:
    """Row wires of tiles g (T, R, C): position j, batch (T, [1,] R), driven at j = 0."""
    s = g.permute(2, 0, 1)
    return _Lines((s.unsqueeze(2) if unsq else s).contiguous(), r_row, r_source)


def _col_lines(g: Tensor, r_col: float, r_sink: float, unsq: bool) -> _Lines:
    """Column wires: position i, batch (T, [1,] C), sensed at i = R - 1."""
    s = g.permute(1, 0, 2)
    return _Lines((s.unsqueeze(2) if unsq else s).contiguous(), r_col, r_sink, rev=True)


class _Coarse:
    """Two-level acceleration of the line relaxation (aggregation coarse-grid correction).

    Every row wire is aggregated into one coarse node and every column wire into another
    (piecewise-constant prolongation). The Galerkin coarse operator is the lumped ``R + C``
    node circuit: row node ``i`` tied to its input through ``1/r_source`` and to column node
    ``j`` through ``G[i, j]``, column node ``j`` tied to the sense node through ``1/r_sink``
    (the wire segments cancel inside an aggregate). After each line sweep the restricted
    residual (net current into each wire) is solved on it and the correction added to every
    node of the wire. The line smoother removes the error along the wires, the coarse solve
    the global row/column modes that make plain line relaxation slow when the driver and
    sense resistances are large; the fixed point (and so the result) is unchanged.
    Used when ``r_source > 0`` and ``r_sink > 0`` (with a Dirichlet end the aggregate would
    contain a fixed node).
    """

    def __init__(self, g: Tensor, r_source: float, r_sink: float, v_end: Tensor):
        T, R, C = g.shape
        self.g = g.unsqueeze(1)  # (T, 1, R, C)
        self.gs, self.gk = 1.0 / r_source, 1.0 / r_sink
        self.v = v_end  # (T, B, R)
        k = g.new_zeros(T, R + C, R + C)
        k[:, :R, :R] = torch.diag_embed(self.gs + g.sum(2))
        k[:, R:, R:] = torch.diag_embed(self.gk + g.sum(1))
        k[:, :R, R:] = -g
        k[:, R:, :R] = -g.transpose(1, 2)
        self.chol = torch.linalg.cholesky(k)
        self.R = R

    def correct_(self, a: Tensor, bn: Tensor) -> Tensor:
        """Add the coarse correction to ``a`` [j, t, b, i] and ``bn`` [i, t, b, j] in place;
        returns the largest correction per tile (T,)."""
        R = self.R
        a_c = a.permute(1, 2, 3, 0)  # [t, b, i, j]
        b_c = bn.permute(1, 2, 0, 3)  # [t, b, i, j]
        flow = self.g * (b_c - a_c)  # current from column node into row node, per cell
        r_row = self.gs * (self.v - a_c[..., 0]) + flow.sum(3)  # (T, B, R)
        r_col = -flow.sum(2) - self.gk * b_c[:, :, R - 1, :]  # (T, B, C)
        rhs = torch.cat([r_row, r_col], 2).transpose(1, 2)  # (T, R + C, B)
        d = torch.cholesky_solve(rhs, self.chol).transpose(1, 2)  # (T, B, R + C)
        a.add_(d[..., :R].unsqueeze(0))
        bn.add_(d[..., R:].unsqueeze(0))
        return torch.linalg.vector_norm(d, ord=math.inf, dim=(1, 2))


def _iterative_chunk(g: Tensor, r_row, r_col, r_source, r_sink, tol, max_iter, warmup=4):
    """G_eff of tiles g (T, R, C) float64 by adaptive line SOR; returns (G_eff, sweeps).

    State: row-node voltages ``a`` in layout [j, t, b, i] and column-node voltages ``bn`` in
    layout [i, t, b, j] (position first, so each Thomas step touches a contiguous slice),
    ``b`` indexing the R unit inputs.
    """
    T, R, C = g.shape
    rows = _row_lines(g, r_row, r_source, True)  # shunts (C, T, 1, R)
    cols = _col_lines(g, r_col, r_sink, True)  # shunts (R, T, 1, C)
    eye = torch.eye(R, dtype=g.dtype, device=g.device)
    v_end = eye.view(1, R, R).expand(T, R, R)  # [t, b, i]: input b drives row i = b
    a = v_end.unsqueeze(0).expand(C, T, R, R).clone()  # ideal start: rows at their input
    bn = torch.zeros(R, T, R, C, dtype=g.dtype, device=g.device)
    omega = torch.ones(1, T, 1, 1, dtype=g.dtype, device=g.device)
    coarse = _Coarse(g, r_source, r_sink, v_end) if r_source > 0 and r_sink > 0 else None
    prev = None
    sweeps = 0
    for it in range(1, max_iter + 1):
        sweeps = it
        deltas = []
        for lines, x, other, v in ((rows, a, bn, v_end), (cols, bn, a, 0.0)):
            f = lines.solve_shunts(other.permute(3, 1, 2, 0), v)  # line voltages
            f.sub_(x)  # update direction
            x.addcmul_(omega, f)  # over-relaxed step
            deltas.append(torch.linalg.vector_norm(f, ord=math.inf, dim=(0, 2, 3)))
        delta = torch.maximum(deltas[0], deltas[1]) * omega.view(T)  # (T,)
        if coarse is not None:
            delta = torch.maximum(delta, coarse.correct_(a, bn))
        if bool((delta <= tol).all()):
            break
        if coarse is None and it == warmup and prev is not None:
            lam = (delta / prev.clamp(min=1e-300)).clamp(0.0, 0.999)
            omega = (2.0 / (1.0 + torch.sqrt(1.0 - lam))).view(1, T, 1, 1)
        prev = delta
    # sensed current = all current entering the column through its cells (KCL)
    a_c = a.permute(1, 2, 3, 0)  # [t, b, i, j]
    b_c = bn.permute(1, 2, 0, 3)  # [t, b, i, j]
    geff = (g.unsqueeze(1) * (a_c - b_c)).sum(2)  # (T, B, C) = G_eff[t, i=b, j]
    return geff, sweeps


def _spd_cholesky(S: Tensor) -> Tensor:
    """Cholesky factors of a batch of symmetric positive definite matrices (the direct
    solver's blocks; Cholesky, not LU, for the reason given in :func:`_spd_solve`)."""
    L, info = torch.linalg.cholesky_ex(S)
    if bool((info != 0).any()):
        raise SpecError(
            "IR-drop direct solve met a block that is not positive definite: the conductances "
            "must be finite and >= 0"
        )
    return L


def _direct_chunk(g: Tensor, r_row, r_col, r_source, r_sink) -> Tensor:
    """Exact G_eff of tiles g (T, R, C) float64: row wires eliminated, block Thomas on columns.

    With the column-node voltages ``b_i`` (C,) of row ``i`` fixed, row ``i``'s wire gives
    ``a_i = M_i b_i + c_i V_i`` (``M_i = K_i^{-1} G_i``, ``c_i = K_i^{-1} e_src e_0``; one
    batched tridiagonal solve of the ``C`` unit shunt potentials). Substituted into the KCL of
    the column nodes this leaves the block-tridiagonal system
    ``A_i b_i - w (b_{i-1} + b_{i+1}) = h_i V_i`` with ``A_i = D_i - G_i M_i`` (C x C,
    symmetric positive definite), ``w = 1 / r_col`` and ``h_i = g_i * c_i``. Forward block
    elimination ``S_i = A_i - w^2 S_{i-1}^{-1}``, ``Y_i = h_i e_i^T + w S_{i-1}^{-1} Y_{i-1}``
    for all ``R`` unit inputs at once ends at the sense row, whose voltages give the sensed
    currents; no back substitution is needed.
    """
    T, R, C = g.shape
    dt, dev = g.dtype, g.device
    rows = _row_lines(g, r_row, r_source, True)  # shunts [j, t, 1, i]
    unit = g.new_zeros(C, T, C, R)  # shunt potential 1 V at position k only: [j, t, k, i]
    unit.diagonal(0, 0, 2).fill_(1.0)
    m = rows.solve_shunts(unit, 0.0)  # M_i[j, k] at [j, t, k, i]
    # G_i M_i (symmetric), contiguous as [t, i, j, k]
    gm = m.mul_(rows.s).permute(1, 3, 0, 2).contiguous()
    c = rows.solve_shunts(torch.zeros_like(rows.s), 1.0).permute(1, 3, 0, 2)[..., 0]  # [t, i, j]
    h = g * c  # (T, R, C): column-node injection per unit input on row i
    eye = torch.eye(C, dtype=dt, device=dev)
    k = 0.0 if r_sink == 0 else 1.0 / r_sink
    if r_col == 0 or R == 1:  # every column is one node
        if r_sink == 0:
            return h.clone()  # column nodes at 0 V: each cell sees only its row voltage
        s = k * eye + torch.diag_embed(g.sum(1)) - gm.sum(1)  # (T, C, C)
        x = torch.cholesky_solve(h.transpose(1, 2), _spd_cholesky(s))  # (T, C, R)
        return k * x.transpose(1, 2)
    w = 1.0 / r_col
    last = R - 1 if r_sink > 0 else R - 2  # last unknown row of column nodes
    y = g.new_zeros(T, C, R)  # Y[t, j, input]
    s_mat = None
    for i in range(last + 1):
        n_nb = 1 if i in (0, R - 1) else 2
        a_i = torch.diag_embed(g[:, i] + w * n_nb + (k if i == R - 1 else 0.0)) - gm[:, i]
        if s_mat is None:
            s_mat = a_i
        else:
            p = torch.cholesky_inverse(_spd_cholesky(s_mat))
            s_mat = a_i.sub_(p, alpha=w * w)
            y[:, :, :i] = torch.bmm(p, y[:, :, :i]).mul_(w)  # inputs below row i only
        y[:, :, i] += h[:, i]
    assert s_mat is not None  # last >= 0: the loop ran
    x = torch.cholesky_solve(y, _spd_cholesky(s_mat))  # voltages of row `last`
    if r_sink > 0:
        return k * x.transpose(1, 2)
    out = w * x.transpose(1, 2)  # through the last column segment into the 0 V sense node
    out[:, R - 1] += h[:, R - 1]  # the cells of the sense row, whose column nodes sit at 0 V
    return out


def _direct(g64: Tensor, r_row, r_col, r_source, r_sink, chunk: int | None = None) -> Tensor:
    T, R, C = g64.shape
    if chunk is None:
        chunk = DIRECT_CHUNK_ELEMENTS if g64.device.type == "cpu" else CHUNK_ELEMENTS_ACCEL
    step = max(1, chunk // (R * C * C))
    return torch.cat(
        [
            _direct_chunk(g64[s : s + step], r_row, r_col, r_source, r_sink)
            for s in range(0, T, step)
        ]
    )


def _approx(g: Tensor, r_row, r_col, r_source, r_sink) -> Tensor:
    """One-pass closed-form G_eff = alpha * G * beta (see the module docstring)."""
    rows = _row_lines(g, r_row, r_source, False)  # (C, T, R)
    alpha = rows.solve_shunts(torch.zeros_like(rows.s), 1.0).permute(1, 2, 0)  # (T, R, C)
    cols = _col_lines(g, r_col, r_sink, False)  # (R, T, C)
    beta = cols.solve_shunts(torch.zeros_like(cols.s), 1.0).permute(1, 0, 2)  # (T, R, C)
    return alpha * g * beta


def effective_conductance(
    g: Tensor,
    r_row: float,
    r_col: float,
    r_source: float = 0.0,
    r_sink: float = 0.0,
    method: IRMethod = "direct",
    tol: float = 1e-12,
    max_iter: int = 2000,
) -> Tensor:
    """Effective conductance matrices ``G_eff`` (same shape and dtype as ``g``).

    Args:
        g: cell conductances (T, R, C) or (R, C), siemens.
        r_row, r_col, r_source, r_sink: ohms (>= 0); geometry in the module docstring.
        method: ``"direct"`` (exact block elimination, the default and fastest),
            ``"iterative"`` (exact to ``tol``), ``"approx"`` (closed form) or ``"nodal"``
            (dense exact solve, small tiles only).
        tol: iterative stop: largest node-voltage change per sweep, volts per 1 V input.
        max_iter: iterative sweep limit; not converging raises :class:`SpecError`.

    All resistances zero returns ``g`` itself.
    """
    _check_resistances("effective_conductance", r_row, r_col, r_source, r_sink)
    check_choice("effective_conductance.method", method, IR_METHODS)
    check_nonneg("effective_conductance.tol", tol)
    check_int("effective_conductance.max_iter", max_iter, low=1)
    if r_row == 0 and r_col == 0 and r_source == 0 and r_sink == 0:
        return g
    g3, squeeze = _as_tiles(g)
    if g3.numel() == 0:
        return g
    g64 = g3.to(torch.float64)
    if method == "nodal":
        R = g64.shape[1]
        out = nodal_solve(g64, torch.eye(R, dtype=torch.float64), r_row, r_col, r_source, r_sink)
    elif method == "approx":
        out = _approx(g64, r_row, r_col, r_source, r_sink)
    elif method == "direct":
        out = _direct(g64, r_row, r_col, r_source, r_sink)
    else:
        out, _ = _iterative(g64, r_row, r_col, r_source, r_sink, tol, max_iter)
    out = out.to(g.dtype)
    return out[0] if squeeze else out


def _iterative(g64, r_row, r_col, r_source, r_sink, tol, max_iter, chunk=None):
    T, R, C = g64.shape
    if chunk is None:
        chunk = CHUNK_ELEMENTS if g64.device.type == "cpu" else CHUNK_ELEMENTS_ACCEL
    per_tile = R * R * C
    step = max(1, chunk // per_tile)
    outs, sweeps = [], 0
    for s in range(0, T, step):
        o, n = _iterative_chunk(g64[s : s + step], r_row, r_col, r_source, r_sink, tol, max_iter)
        if n >= max_iter:
            raise SpecError(
                f"IR-drop iterative solve did not reach tol={tol:g} in max_iter={max_iter} "
                "sweeps; raise max_iter or tol, or use method='nodal' for small tiles"
            )
        outs.append(o)
        sweeps = max(sweeps, n)
    return torch.cat(outs), sweeps


@dataclass(frozen=True)
class IRDrop(ConductanceEffect):
    """Replace the conductances by the effective ones of a crossbar with wire resistance.

    Stage "circuit" (input independent, once per trial, after drift). Returns ``G_eff``
    (see :func:`effective_conductance`), so the downstream decode yields effective weights.

    Attributes:
        r_row: row wire segment between adjacent cells, ohms.
        r_col: column wire segment between adjacent cells, ohms.
        r_source: input driver resistance at the left end of each row, ohms.
        r_sink: sense resistance at the bottom end of each column, ohms.
        method: ``"direct"`` (default, exact), ``"iterative"`` (exact to ``tol``),
            ``"approx"`` or ``"nodal"``.
        tol, max_iter: iterative solver controls (unused by the other methods).
    """

    r_row: float = 0.0
    r_col: float = 0.0
    r_source: float = 0.0
    r_sink: float = 0.0
    method: IRMethod = "direct"
    tol: float = 1e-12
    max_iter: int = 2000
    stage: ClassVar[Stage] = "circuit"

    def __post_init__(self) -> None:
        _check_resistances("IRDrop", self.r_row, self.r_col, self.r_source, self.r_sink)
        check_choice("IRDrop.method", self.method, IR_METHODS)
        check_nonneg("IRDrop.tol", self.tol)
        check_int("IRDrop.max_iter", self.max_iter, low=1)

    @property
    def is_ideal(self) -> bool:
        return self.r_row == 0 and self.r_col == 0 and self.r_source == 0 and self.r_sink == 0

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        return effective_conductance(
            g,
            self.r_row,
            self.r_col,
            self.r_source,
            self.r_sink,
            self.method,
            self.tol,
            self.max_iter,
        )
