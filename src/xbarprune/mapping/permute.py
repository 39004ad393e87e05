"""Derived placements: permutations and packings of a layer's layout (DESIGN.md `mapping/`).

All functions return a new :class:`LayerLayout`; the mapped matrix itself is never changed, so
the ideal output of a layer is the same under any of them (partial sums are re-gathered
digitally by matrix column). Used by input feature-map reorder (Liang et al. 2018, Sec. III-C),
output recombination / column-grain packing (Liang et al. 2018), XCS/XRS packing and column
rearrangement (Bhattacharjee et al. 2022), unused path removal (Ma et al. 2020) and clusters
(TraNNsformer, Ankit et al. 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xbarprune.errors import MappingError
from xbarprune.mapping.layout import Block, CrossbarLayout, LayerLayout, layer_matrices


def _check_perm(p: Tensor, n: int, what: str, name: str) -> Tensor:
    p = torch.as_tensor(p, dtype=torch.long).reshape(-1)
    if p.numel() != n or not torch.equal(torch.sort(p).values, torch.arange(n)):
        raise MappingError(f"layer '{name}': {what} is not a permutation of 0..{n - 1}")
    return p


def permuted(layer: LayerLayout, row_order: Tensor | None = None, col_order: Tensor | None = None):
    """Dense layout with rows and/or columns placed in the given order (a single block)."""
    R, C = layer.matrix_shape
    rows = (
        torch.arange(R) if row_order is None else _check_perm(row_order, R, "row order", layer.name)
    )
    cols = (
        torch.arange(C)
        if col_order is None
        else _check_perm(col_order, C, "column order", layer.name)
    )
    return layer.with_blocks([Block(rows, cols)])


def channel_order_to_rows(layer: LayerLayout, channel_order: Tensor) -> Tensor:
    """Input-channel permutation -> mapped-matrix row permutation (kh*kw rows per channel)."""
    k = layer.kernel_numel
    co = _check_perm(channel_order, layer.in_channels, "channel order", layer.name)
    return (co.view(-1, 1) * k + torch.arange(k).view(1, -1)).reshape(-1)


def compact(layer: LayerLayout, mat: Tensor) -> LayerLayout:
    """Drop all-zero rows and columns of every block (removes unused paths from the tiles)."""
    blocks = []
    for b in layer.blocks:
        sub = mat[b.rows][:, b.cols]
        r = b.rows[(sub != 0).any(1)]
        c = b.cols[(sub != 0).any(0)]
        if r.numel() and c.numel():
            blocks.append(Block(r, c))
    return _non_empty(layer, blocks)


def pack_columns(layer: LayerLayout, mat: Tensor) -> LayerLayout:
    """Column-grain packing (output recombination / XCS): per row band of the current layout,
    keep only the columns with a non-zero weight in that band and tile them densely.

    A band is one tile-row of a block (``crossbar.rows`` matrix rows). Its surviving
    column segments are recombined into ``ceil(n_alive / weights_per_row)`` tiles; the
    column's partial sums from different bands are added digitally.
    """
    x = layer.crossbar
    blocks = []
    for b in layer.blocks:
        for rows in torch.split(b.rows, x.rows):
            sub = mat[rows][:, b.cols]
            cols = b.cols[(sub != 0).any(0)]
            if cols.numel():
                blocks.append(Block(rows, cols))
    return _non_empty(layer, blocks)


def pack_rows(layer: LayerLayout, mat: Tensor) -> LayerLayout:
    """Row-grain packing (XRS): per column band (``weights_per_row`` columns) of the current
    layout, keep only rows with a non-zero weight in that band and tile them densely."""
    x = layer.crossbar
    blocks = []
    for b in layer.blocks:
        for cols in torch.split(b.cols, x.weights_per_row):
            sub = mat[b.rows][:, cols]
            rows = b.rows[(sub != 0).any(1)]
            if rows.numel():
                blocks.append(Block(rows, cols))
    return _non_empty(layer, blocks)


def packed_tile_count(layer: LayerLayout, mat: Tensor, grain: str) -> int:
    """Closed-form tile count after packing, for checking: sum over bands of ceil(alive/size)."""
    x = layer.crossbar
    total = 0
    for b in layer.blocks:
        if grain == "column":
            for rows in torch.split(b.rows, x.rows):
                alive = int((mat[rows][:, b.cols] != 0).any(0).sum())
                total += x.col_bands(alive)
        elif grain == "row":
            for cols in torch.split(b.cols, x.weights_per_row):
                alive = int((mat[b.rows][:, cols] != 0).any(1).sum())
                total += x.row_bands(alive)
        else:
            raise MappingError(f"unknown packing grain {grain!r}; allowed: 'column', 'row'")
    return total


def _non_empty(layer: LayerLayout, blocks: list[Block]) -> LayerLayout:
    if not blocks:
        # an entirely pruned layer still needs a placement object: keep one 1x1 block of
        # a zero weight so the layer stays well-defined (it occupies one tile).
        blocks = [Block(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))]
    return layer.with_blocks(blocks)


def pack_for_kind(layer: LayerLayout, mat: Tensor, kind: str) -> LayerLayout:
    """The packing that turns ``kind`` sparsity into freed crossbars.

    ``tile_column`` / ``filter``: column-grain packing (output recombination, Liang et al.
    2018; XCS packing, Bhattacharjee et al. 2022); ``tile_row`` / ``channel``: row-grain
    packing (XRS); ``weight``: drop all-zero rows and columns; ``tile``: unchanged (an
    all-zero tile is already freed).
    """
    if kind in ("tile_column", "filter"):
        return pack_columns(layer, mat)
    if kind in ("tile_row", "channel"):
        return pack_rows(layer, mat)
    if kind == "weight":
        return compact(layer, mat)
    if kind == "tile":
        return layer
    raise MappingError(f"unknown group kind {kind!r} for packing")


def pack_layout(layout: CrossbarLayout, model: nn.Module, kind: str) -> CrossbarLayout:
    """Every layer of ``layout`` re-packed for its ``kind`` sparsity (:func:`pack_for_kind`)."""
    mats = layer_matrices(model, layout)
    return CrossbarLayout(
        layout.crossbar, {n: pack_for_kind(lay, mats[n], kind) for n, lay in layout.layers.items()}
    )
