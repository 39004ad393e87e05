"""Placement of mapped matrices on crossbar tiles (DESIGN.md `mapping/`).

A :class:`LayerLayout` places one layer's mapped matrix W (R x C) on tiles. The placement is a
list of :class:`Block` s: each block is a set of matrix rows x a set of matrix columns, tiled on
its own into ``ceil(|rows| / xbar.rows) * ceil(|cols| / xbar.weights_per_row)`` tiles, rows and
columns in the block's order. One block holding every row and column in natural order is the
dense layout; reordered index lists are permutations (input feature-map reorder, column
rearrangement); blocks that omit all-zero rows/columns are packings (output recombination,
XCS/XRS packing, unused-path removal); several blocks are clusters (TraNNsformer). Weights
outside every block are not on the crossbar and must be zero. Partial sums of a column that
spans several tiles are added digitally, so every placement computes the same ideal output.

Everything a simulator or pruner needs is an index tensor derived once per layout:

* ``tile_rows`` (T, rows) / ``tile_cols`` (T, wpr): the matrix row / column held by each tile
  row / logical column slot (-1 = empty slot);
* group index tensors (:class:`Groups`) for tile, tile-column, tile-row, filter and channel
  groups, in flat mapped-matrix indices ``r * C + c``;
* the physical tile view of the cells, ``(T, rows, cols)``, with the column order documented in
  :meth:`LayerLayout.physical_index`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor, nn

from xbarprune.errors import MappingError, SpecError
from xbarprune.hardware.spec import CrossbarSpec
from xbarprune.mapping.coverage import attention_internals, matches
from xbarprune.mapping.matrix import (
    MAPPABLE,
    check_mappable,
    is_refused,
    matrix_shape,
    weight_to_matrix,
)

GroupKind = Literal["tile", "tile_column", "tile_row", "filter", "channel", "weight"]
GROUP_KINDS: tuple[str, ...] = ("tile", "tile_column", "tile_row", "filter", "channel", "weight")


@dataclass(frozen=True)
class Block:
    """A sub-matrix (rows x cols of the mapped matrix) tiled on its own crossbars.

    ``mask`` (optional, bool ``(len(rows), len(cols))``): the cells of the rectangle this block
    holds; the others are unused cross-points of its tiles (holes), e.g. weights held by an
    overlapping block (TraNNsformer clusters, windows of unclustered synapses). None = all.
    """

    rows: Tensor
    cols: Tensor
    mask: Tensor | None = None

    def _flat(self, C: int) -> Tensor:
        flat = self.rows.view(-1, 1) * C + self.cols.view(1, -1)
        return flat.reshape(-1) if self.mask is None else flat[self.mask]

    def grid(self, xbar: CrossbarSpec) -> tuple[int, int]:
        """``(row bands, column bands)`` of the tiles this block takes on ``xbar``."""
        return xbar.tile_grid(len(self.rows), len(self.cols))

    def tiles(self, xbar: CrossbarSpec) -> int:
        """Tiles this block takes on ``xbar`` (:meth:`CrossbarSpec.tiles`)."""
        return xbar.tiles(len(self.rows), len(self.cols))


@dataclass(frozen=True)
class Groups:
    """Groups of weights, as padded flat indices into the mapped matrix.

    ``index`` is (G, M) with -1 padding; ``sizes`` (G,) the real group sizes. All reductions
    are vectorised gathers: no Python loop over groups.
    """

    kind: str
    index: Tensor
    sizes: Tensor
    numel: int  # R * C of the matrix the indices refer to

    def __len__(self) -> int:
        return self.index.shape[0]

    def gather(self, mat: Tensor) -> Tensor:
        """Values of ``mat`` per group, (G, M), zero in padded slots."""
        flat = torch.cat([mat.reshape(-1), mat.new_zeros(1)])
        idx = self.index.to(mat.device)
        idx = torch.where(idx < 0, torch.full_like(idx, self.numel), idx)
        return flat[idx]

    def norms(self, mat: Tensor, p: float = 2.0) -> Tensor:
        """Per-group p-norm of ``mat`` (differentiable)."""
        vals = self.gather(mat)
        if p == 2.0:
            return vals.pow(2).sum(1).clamp_min(0).sqrt()
        return vals.abs().pow(p).sum(1).pow(1.0 / p)

    def weight_mask(self, keep: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Group keep flags (G,) bool -> mapped-matrix mask (R, C) (weights of dropped groups 0).

        Weights in no group of this kind stay 1.
        """
        mask = torch.ones(self.numel + 1, dtype=torch.bool, device=keep.device)
        drop = self.index.to(keep.device)[~keep]
        drop = torch.where(drop < 0, torch.full_like(drop, self.numel), drop)
        mask[drop.reshape(-1)] = False
        return mask[: self.numel].reshape(shape)

    def nonzero(self, mat: Tensor) -> Tensor:
        """Bool (G,): group has at least one non-zero weight."""
        return (self.gather(mat) != 0).any(1)


def _pad_stack(rows: list[Tensor], fill: int = -1) -> Tensor:
    if not rows:
        return torch.empty(0, 0, dtype=torch.long)
    m = max(len(r) for r in rows)
    out = torch.full((len(rows), max(m, 1)), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@dataclass(eq=False)
class LayerLayout:
    """One layer's mapped matrix on crossbar tiles.

    Attributes:
        name: module name in the model.
        kind: ``"conv"`` or ``"linear"``.
        weight_shape: the layer's weight shape.
        crossbar: the tile description.
        blocks: the placement (see module docstring); default = dense.
    """

    name: str
    kind: Literal["conv", "linear"]
    weight_shape: tuple[int, ...]
    crossbar: CrossbarSpec
    blocks: list[Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.weight_shape = tuple(int(s) for s in self.weight_shape)
        R, C = self.matrix_shape
        if not self.blocks:
            self.blocks = [Block(torch.arange(R), torch.arange(C))]
        seen = torch.zeros(R * C, dtype=torch.int32)
        for b in self.blocks:
            if b.rows.numel() == 0 or b.cols.numel() == 0:
                raise MappingError(f"layer '{self.name}': a block with no rows or columns")
            if int(b.rows.min()) < 0 or int(b.rows.max()) >= R:
                raise MappingError(f"layer '{self.name}': block row index outside [0, {R})")
            if int(b.cols.min()) < 0 or int(b.cols.max()) >= C:
                raise MappingError(f"layer '{self.name}': block column index outside [0, {C})")
            if b.mask is not None and tuple(b.mask.shape) != (len(b.rows), len(b.cols)):
                raise MappingError(
                    f"layer '{self.name}': block mask of shape {tuple(b.mask.shape)} for "
                    f"{len(b.rows)} rows x {len(b.cols)} columns"
                )
            flat = b._flat(C)
            seen.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        if seen.numel() and int(seen.max()) > 1:
            raise MappingError(
                f"layer '{self.name}': blocks overlap; a weight would be placed twice"
            )

    # ------------------------------------------------------------------ shapes
    @property
    def matrix_shape(self) -> tuple[int, int]:
        return matrix_shape(self.weight_shape)

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1]

    @property
    def kernel_numel(self) -> int:
        """kh*kw for conv layers, 1 for linear layers."""
        return self.matrix_shape[0] // self.in_channels

    @property
    def n_tiles(self) -> int:
        return sum(b.tiles(self.crossbar) for b in self.blocks)

    @property
    def dense_tiles(self) -> int:
        """Tiles of the dense, natural-order layout of this layer on the same crossbar."""
        return self.crossbar.tiles(*self.matrix_shape)

    # ------------------------------------------------------------------ tile tables
    @cached_property
    def _tables(self) -> tuple[Tensor, Tensor, Tensor]:
        x = self.crossbar
        rows_t: list[Tensor] = []
        cols_t: list[Tensor] = []
        block_of: list[int] = []
        for bi, b in enumerate(self.blocks):
            rchunks = torch.split(b.rows, x.rows)
            cchunks = torch.split(b.cols, x.weights_per_row)
            for rc in rchunks:
                for cc in cchunks:
                    rows_t.append(rc)
                    cols_t.append(cc)
                    block_of.append(bi)
        tr = torch.full((len(rows_t), x.rows), -1, dtype=torch.long)
        tc = torch.full((len(cols_t), x.weights_per_row), -1, dtype=torch.long)
        for t, (rc, cc) in enumerate(zip(rows_t, cols_t, strict=True)):
            tr[t, : len(rc)] = rc
            tc[t, : len(cc)] = cc
        return tr, tc, torch.tensor(block_of, dtype=torch.long)

    @property
    def tile_rows(self) -> Tensor:
        """(T, rows): matrix row held by each tile row, -1 if empty."""
        return self._tables[0]

    @property
    def tile_cols(self) -> Tensor:
        """(T, weights_per_row): matrix column held by each logical column slot, -1 if empty."""
        return self._tables[1]

    @property
    def tile_block(self) -> Tensor:
        """(T,): index of the block each tile belongs to."""
        return self._tables[2]

    @cached_property
    def tile_cells(self) -> Tensor:
        """(T, rows, weights_per_row) flat matrix index of each weight slot, -1 if empty."""
        C = self.matrix_shape[1]
        tr, tc = self.tile_rows, self.tile_cols
        idx = tr.unsqueeze(2) * C + tc.unsqueeze(1)
        idx = torch.where((tr.unsqueeze(2) >= 0) & (tc.unsqueeze(1) >= 0), idx, -1)
        if any(b.mask is not None for b in self.blocks):  # holes of masked blocks
            x = self.crossbar
            t = 0
            for b in self.blocks:
                nr, nc = b.grid(x)
                if b.mask is not None:
                    m = torch.zeros(nr * x.rows, nc * x.weights_per_row, dtype=torch.bool)
                    m[: len(b.rows), : len(b.cols)] = b.mask
                    m = m.view(nr, x.rows, nc, x.weights_per_row).permute(0, 2, 1, 3)
                    hole = ~m.reshape(nr * nc, x.rows, x.weights_per_row)
                    idx[t : t + nr * nc][hole] = -1
                t += nr * nc
        return idx

    @cached_property
    def placed(self) -> Tensor:
        """(R, C) bool: weight lies in some block (is on the crossbar)."""
        R, C = self.matrix_shape
        m = torch.zeros(R * C, dtype=torch.bool)
        for b in self.blocks:  # not via tile_cells: that (T, rows, wpr) long table is 8x larger
            m[b._flat(C)] = True
        return m.reshape(R, C)

    # ------------------------------------------------------------------ groups
    def groups(self, kind: str) -> Groups:
        """Group index tensors of ``kind`` (cached); ``kind`` is one of :data:`GROUP_KINDS`
        (typed ``str`` too: kinds come from configs, and an unknown one raises SpecError).

        * ``tile``: all weight slots of one tile;
        * ``tile_column``: one logical column of one tile (its ``rows`` weights; the cells of a
          differential pair / bit slices go together);
        * ``tile_row``: one row of one tile (its weights_per_row weights);
        * ``filter``: one column of the mapped matrix (one output neuron / conv filter);
        * ``channel``: the rows of one input channel (kh*kw rows for conv, one row for linear)
          across all columns;
        * ``weight``: every weight alone.
        """
        cache = self.__dict__.setdefault("_group_cache", {})
        if kind not in cache:
            cache[kind] = self._build_groups(kind)
        return cache[kind]

    def _build_groups(self, kind: str) -> Groups:
        R, C = self.matrix_shape
        n = R * C
        if kind == "tile":
            idx = self.tile_cells.reshape(self.n_tiles, -1)
        elif kind == "tile_column":
            idx = self.tile_cells.permute(0, 2, 1).reshape(-1, self.crossbar.rows)
        elif kind == "tile_row":
            idx = self.tile_cells.reshape(-1, self.crossbar.weights_per_row)
        elif kind == "filter":
            idx = (torch.arange(R).view(-1, 1) * C + torch.arange(C).view(1, -1)).t()
        elif kind == "channel":
            k = self.kernel_numel
            idx = torch.arange(n).view(self.in_channels, k * C)
        elif kind == "weight":
            idx = torch.arange(n).view(-1, 1)
        else:
            raise SpecError(f"unknown group kind {kind!r}; allowed: {', '.join(GROUP_KINDS)}")
        # compact: valid indices first, drop groups with no weight
        valid = idx >= 0
        sizes = valid.sum(1)
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
        idx = torch.gather(idx, 1, order)
        keep = sizes > 0
        idx, sizes = idx[keep], sizes[keep]
        if idx.numel():
            idx = idx[:, : int(sizes.max())]
        return Groups(kind=kind, index=idx.contiguous(), sizes=sizes, numel=n)

    # ------------------------------------------------------------------ accounting
    def tiles_needed(self, mat: Tensor) -> int:
        """Tiles holding at least one non-zero weight (an all-zero tile is freed)."""
        return int(self.groups("tile").nonzero(mat.detach().cpu()).sum())

    def tile_usage(self, mat: Tensor) -> dict[str, Tensor]:
        """Per tile: used rows / logical columns (non-zero weights in them), non-zeros, cells.

        Returns dict of (T,) tensors: ``rows_used``, ``cols_used``, ``nonzero`` (weights),
        ``active`` (bool, tile needed).
        """
        flat = torch.cat([mat.detach().cpu().reshape(-1), torch.zeros(1)])
        cells = self.tile_cells
        vals = flat[torch.where(cells < 0, flat.numel() - 1, cells)]  # (T, rows, wpr)
        nz = vals != 0
        return {
            "rows_used": nz.any(2).sum(1),
            "cols_used": nz.any(1).sum(1),
            "nonzero": nz.sum((1, 2)),
            "active": nz.any(2).any(1),
        }

    def occupancy(self, mat: Tensor) -> Tensor:
        """Fraction of non-zero weight slots per tile, shaped as the first block's tile grid
        when there is one block, else (T,)."""
        u = self.tile_usage(mat)
        frac = u["nonzero"].float() / (self.crossbar.rows * self.crossbar.weights_per_row)
        if len(self.blocks) == 1:
            b = self.blocks[0]
            nr, nc = b.grid(self.crossbar)
            return frac.view(nr, nc)
        return frac

    def occupancy_grids(self, mat: Tensor) -> list[list[list[float]]]:
        """Fraction of non-zero weight slots of every physical tile, one (row band x column
        band) grid per block, in block order (the tile order of :attr:`tile_cells`)."""
        u = self.tile_usage(mat)
        frac = u["nonzero"].float() / (self.crossbar.rows * self.crossbar.weights_per_row)
        grids, t = [], 0
        for b in self.blocks:
            nr, nc = b.grid(self.crossbar)
            grids.append(frac[t : t + nr * nc].view(nr, nc).tolist())
            t += nr * nc
        return grids

    def summary(self, mat: Tensor | None = None) -> dict:
        """Plain-dict accounting for reports (mat: current mapped matrix, for pruning stats)."""
        R, C = self.matrix_shape
        x = self.crossbar
        d = {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "matrix_shape": [R, C],
            "physical_shape": [R, C * x.columns_per_weight],
            "blocks": len(self.blocks),
            "tiles_dense": self.dense_tiles,
            "tiles_layout": self.n_tiles,
        }
        if mat is not None:
            u = self.tile_usage(mat)
            act = u["active"]
            needed = int(act.sum())
            nnz = int((mat != 0).sum())
            d.update(
                tiles_needed=needed,
                weights=R * C,
                nonzero=nnz,
                weight_sparsity=1.0 - nnz / (R * C),
                utilisation=nnz / max(needed * x.rows * x.weights_per_row, 1),
                unused_rows=int((x.rows - u["rows_used"][act]).sum()),
                unused_cols=int((x.weights_per_row - u["cols_used"][act]).sum()),
            )
        return d

    # ------------------------------------------------------------------ physical view
    @cached_property
    def physical_index(self) -> Tensor:
        """(T, rows, cols) index into the flat cell source vector, ``n_src`` = unused (g_min).

        The source vector is ``cat(cells.reshape(-1), ref.reshape(-1), [g_min])`` with cells
        (k, S, R, C) and, for the offset encoding, ref (T, rows) reference cells. Physical
        column of logical slot c, slice j, sign s inside a tile: ``c*2k + 2j + s``
        (differential) or ``c*k + j`` (offset; reference column = last column).
        """
        x = self.crossbar
        R, C = self.matrix_shape
        k = x.cells_per_weight
        S = x.sides
        T = self.n_tiles
        n_cells = k * S * R * C
        n_ref = T * x.rows * x.reference_columns
        unused = n_cells + n_ref
        tc = self.tile_cells  # (T, rows, wpr)
        phys = torch.full((T, x.rows, x.cols), unused, dtype=torch.long)
        for j in range(k):
            for s in range(S):
                col = torch.arange(x.weights_per_row) * (S * k) + (2 * j + s if S == 2 else j)
                src = torch.where(tc >= 0, (j * S + s) * R * C + tc, unused)
                phys[:, :, col] = src
        if x.encoding == "offset":
            rows_used = self.tile_rows >= 0
            ref = torch.arange(T * x.rows).view(T, x.rows) + n_cells
            phys[:, :, x.cols - 1] = torch.where(rows_used, ref, unused)
        return phys

    @property
    def n_source(self) -> int:
        x = self.crossbar
        R, C = self.matrix_shape
        S = x.sides
        n_ref = self.n_tiles * x.rows * x.reference_columns
        return x.cells_per_weight * S * R * C + n_ref

    @cached_property
    def used_cells(self) -> Tensor:
        """(T, rows, cols) bool: physical cell holds a weight cell or a reference cell."""
        return self.physical_index < self.n_source

    @cached_property
    def _inverse(self) -> Tensor:
        """(n_source,) position of each source cell in the flat physical view (-1: unplaced)."""
        inv = torch.full((self.n_source + 1,), -1, dtype=torch.long)
        p = self.physical_index.reshape(-1)
        inv[p] = torch.arange(p.numel())
        return inv[: self.n_source]

    @cached_property
    def _inverse_clamped(self) -> Tensor:
        inv = self._inverse
        n = int(self.physical_index.numel())
        return torch.where(inv < 0, n, inv)

    def to_tiles(self, cells: Tensor, g_min: float, ref: Tensor | None = None) -> Tensor:
        """Cells (k, S, R, C) [+ ref (T, rows)] -> physical view (T, rows, cols)."""
        parts = [cells.reshape(-1)]
        if self.crossbar.encoding == "offset":
            parts.append(
                ref.reshape(-1)
                if ref is not None
                else cells.new_full((self.n_tiles * self.crossbar.rows,), g_min)
            )
        parts.append(cells.new_full((1,), g_min))
        src = torch.cat(parts)
        return src[self.physical_index.to(cells.device)]

    def from_tiles(self, phys: Tensor, g_min: float) -> tuple[Tensor, Tensor | None]:
        """Physical view -> (cells (k, S, R, C), ref (R, C) per weight or None).

        Cells of weights that are not placed get g_min (and decode to 0 for differential).
        For the offset encoding the returned ref holds, per weight, the conductance of the
        reference cell in the same tile row.
        """
        x = self.crossbar
        R, C = self.matrix_shape
        S = x.sides
        flat = torch.cat([phys.reshape(-1), phys.new_full((1,), g_min)])
        src = flat[self._inverse_clamped.to(phys.device)]
        n_cells = x.cells_per_weight * S * R * C
        cells = src[:n_cells].view(x.cells_per_weight, S, R, C)
        ref = None
        if x.encoding == "offset":
            ref_tile = src[n_cells:].view(self.n_tiles, x.rows)
            ref = self._ref_per_weight(ref_tile, g_min)
        return cells, ref

    def _ref_per_weight(self, ref_tile: Tensor, g_min: float) -> Tensor:
        R, C = self.matrix_shape
        tc = self.tile_cells  # (T, rows, wpr)
        T, rows, _ = tc.shape
        row_ref_idx = torch.arange(T * rows).view(T, rows, 1).expand_as(tc)
        pos = torch.full((R * C + 1,), T * rows, dtype=torch.long)
        valid = tc >= 0
        pos[tc[valid]] = row_ref_idx[valid]
        src = torch.cat([ref_tile.reshape(-1), ref_tile.new_full((1,), g_min)])
        return src[pos[: R * C].to(ref_tile.device)].view(R, C)

    # ------------------------------------------------------------------ derived layouts
    def with_blocks(self, blocks: Sequence[Block]) -> LayerLayout:
        return LayerLayout(self.name, self.kind, self.weight_shape, self.crossbar, list(blocks))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "blocks": [
                {"rows": b.rows.tolist(), "cols": b.cols.tolist()}
                | ({} if b.mask is None else {"mask": b.mask.tolist()})
                for b in self.blocks
            ],
        }

    @classmethod
    def from_dict(cls, d: dict, crossbar: CrossbarSpec) -> LayerLayout:
        blocks = [
            Block(
                torch.tensor(b["rows"], dtype=torch.long),
                torch.tensor(b["cols"], dtype=torch.long),
                None if b.get("mask") is None else torch.tensor(b["mask"], dtype=torch.bool),
            )
            for b in d["blocks"]
        ]
        return cls(d["name"], d["kind"], tuple(d["weight_shape"]), crossbar, blocks)


class CrossbarLayout:
    """The crossbar layout of a whole model: one :class:`LayerLayout` per mapped layer."""

    def __init__(self, crossbar: CrossbarSpec, layers: dict[str, LayerLayout]):
        self.crossbar = crossbar
        self.layers = dict(layers)

    def __iter__(self) -> Iterator[LayerLayout]:
        return iter(self.layers.values())

    def __getitem__(self, name: str) -> LayerLayout:
        try:
            return self.layers[name]
        except KeyError:
            raise MappingError(
                f"no mapped layer named '{name}'; mapped layers: {', '.join(self.layers)}"
            ) from None

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    @property
    def dense_tiles(self) -> int:
        return sum(layer.dense_tiles for layer in self)

    @property
    def n_tiles(self) -> int:
        return sum(layer.n_tiles for layer in self)

    def tiles_needed(self, model: nn.Module) -> int:
        mats = layer_matrices(model, self)
        return sum(layer.tiles_needed(mats[layer.name]) for layer in self)

    def summary(self, model: nn.Module | None = None) -> list[dict]:
        mats = layer_matrices(model, self) if model is not None else {}
        return [layer.summary(mats.get(layer.name)) for layer in self]

    def replace(self, layer: LayerLayout) -> CrossbarLayout:
        layers = dict(self.layers)
        layers[layer.name] = layer
        return CrossbarLayout(self.crossbar, layers)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {
            "crossbar": asdict(self.crossbar),
            "layers": [layer.to_dict() for layer in self],
        }

    @classmethod
    def from_dict(cls, d: dict) -> CrossbarLayout:
        xbar = CrossbarSpec(**d["crossbar"])
        layers = [LayerLayout.from_dict(ld, xbar) for ld in d["layers"]]
        return cls(xbar, {layer.name: layer for layer in layers})


def mappable_layers(
    model: nn.Module,
    *,
    on_unsupported: Literal["error", "digital"] = "error",
    digital: Sequence[str] = (),
) -> dict[str, nn.Conv2d | nn.Linear]:
    """Named Conv2d/Linear layers of ``model`` in definition order.

    Grouped convolutions and Conv1d/Conv3d/transposed convolutions raise
    :class:`~xbarprune.errors.UnsupportedLayerError` unless ``on_unsupported="digital"``
    (then they stay digital and are not counted). Layers matching ``digital`` (names or
    ``fnmatch`` patterns) and the internals of ``nn.MultiheadAttention`` (which reads its
    weights directly) stay digital; :func:`xbarprune.mapping.coverage.coverage` lists them.
    """
    skip = attention_internals(model)
    out: dict[str, nn.Conv2d | nn.Linear] = {}
    for name, mod in model.named_modules():
        if name in skip or (digital and name and matches(name, tuple(digital))):
            continue
        if is_refused(mod):
            if on_unsupported == "error":
                check_mappable(name, mod)  # raises with the reason
            continue
        if isinstance(mod, MAPPABLE):
            check_mappable(name, mod)
            out[name] = mod
    return out


def map_model(
    model: nn.Module,
    crossbar: CrossbarSpec,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    on_unsupported: Literal["error", "digital"] = "error",
    digital: Sequence[str] = (),
) -> CrossbarLayout:
    """Dense layout of every mapped layer of ``model`` (optionally a subset by name); layers
    matching ``digital`` (names or ``fnmatch`` patterns) stay digital."""
    layers = mappable_layers(model, on_unsupported=on_unsupported, digital=digital)
    if include is not None:
        missing = [n for n in include if n not in layers]
        if missing:
            raise MappingError(
                f"layers not found or not mappable: {', '.join(missing)}; "
                f"mappable: {', '.join(layers)}"
            )
        layers = {n: layers[n] for n in include}
    out = {}
    for name, mod in layers.items():
        if name in exclude:
            continue
        kind: Literal["conv", "linear"] = "conv" if isinstance(mod, nn.Conv2d) else "linear"
        out[name] = LayerLayout(name, kind, tuple(mod.weight.shape), crossbar)
    if not out:
        raise MappingError("the model has no Conv2d or Linear layer to map onto crossbars")
    return CrossbarLayout(crossbar, out)


def layer_matrices(model: nn.Module, layout: CrossbarLayout) -> dict[str, Tensor]:
    """Current mapped matrices (detached, CPU) of the layout's layers in ``model``."""
    mods = dict(model.named_modules())
    out = {}
    for layer in layout:
        mod = mods.get(layer.name)
        if mod is None or not hasattr(mod, "weight"):
            raise MappingError(f"layer '{layer.name}' of the layout is not in the model")
        if tuple(mod.weight.shape) != layer.weight_shape:
            raise MappingError(
                f"layer '{layer.name}': weight shape {tuple(mod.weight.shape)} does not match "
                f"the layout's {layer.weight_shape}"
            )
        out[layer.name] = weight_to_matrix(mod.weight.detach()).cpu()
    return out
