"""Crossbar column rearrangement (Bhattacharjee, Bhatnagar, Panda, DATE 2022; the algorithm is
not public, so every variant here is ours and they are compared by measurement).

A rearrangement is a permutation of the matrix columns (filters) *inside each block* of a
layer's layout (:func:`xbarprune.mapping.permute.permuted` generalised to packed layouts): the
block keeps its rows and its number of columns, so the tile count is unchanged, and the
analog layer gathers partial sums by matrix column, so outputs are un-permuted digitally and
the ideal output is identical. The key of a column is its total conductance on the block,
``sum_rows |w|`` (the cells above ``g_min`` that it holds).

Variants (``VARIANTS``):

* ``none``: the layout as it is;
* ``within_desc``: inside every tile (every chunk of ``weights_per_row`` columns of a block),
  columns sorted by decreasing conductance, so the highest-conductance columns sit nearest
  the row drivers (position 0 of every row wire, where the row IR drop is smallest);
* ``within_asc``: the opposite order (highest-conductance columns farthest from the drivers,
  nearest the end of the row wires);
* ``across``: filters re-assigned to the tiles of a block so that the per-tile conductance is
  balanced (greedy longest-processing-time: columns in decreasing conductance, each to the
  tile with the lowest total that still has room), order inside a tile unchanged;
* ``across_within``: ``across`` then ``within_desc``.

:func:`xbarprune.analog.parasitics.choose_rearrangement` measures the mean NF of every variant
per layer on a calibration batch with the parasitics simulator and keeps the lowest (``none``
included, so the choice never measures worse than no rearrangement); it lives next to that
simulator so that mapping/ does not import analog/.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.mapping.layout import Block, LayerLayout

VARIANTS: tuple[str, ...] = ("none", "within_desc", "within_asc", "across", "across_within")


def column_conductance(block: Block, mat: Tensor) -> Tensor:
    """Key of every column of ``block``: ``sum |w|`` over the block's rows (len(block.cols),)."""
    return mat[block.rows][:, block.cols].abs().sum(0).double()


def _within(cols: Tensor, key: Tensor, size: int, descending: bool) -> Tensor:
    out = []
    for s in range(0, len(cols), size):
        k = key[s : s + size]
        order = torch.argsort(k, descending=descending, stable=True)
        out.append(cols[s : s + size][order])
    return torch.cat(out)


def _across(cols: Tensor, key: Tensor, size: int) -> Tensor:
    n = len(cols)
    n_tiles = -(-n // size)
    if n_tiles <= 1:
        return cols
    cap = [min(size, n - t * size) for t in range(n_tiles)]  # same chunk sizes as before
    load = [0.0] * n_tiles
    members: list[list[int]] = [[] for _ in range(n_tiles)]
    for i in torch.argsort(key, descending=True, stable=True).tolist():
        best = min((t for t in range(n_tiles) if len(members[t]) < cap[t]), key=lambda t: load[t])
        members[best].append(i)
        load[best] += float(key[i])
    return torch.cat([cols[torch.tensor(sorted(m), dtype=torch.long)] for m in members])


def rearranged(layer: LayerLayout, mat: Tensor, variant: str) -> LayerLayout:
    """The layout with every block's columns permuted by ``variant`` (see ``VARIANTS``)."""
    if variant not in VARIANTS:
        raise SpecError(f"rearrangement = {variant!r}; allowed: {', '.join(VARIANTS)}")
    if variant == "none":
        return layer
    size = layer.crossbar.weights_per_row
    mat = mat.detach().cpu()
    blocks = []
    for b in layer.blocks:
        cols = b.cols
        if variant in ("across", "across_within"):
            cols = _across(cols, column_conductance(Block(b.rows, cols), mat), size)
        if variant in ("within_desc", "across_within"):
            cols = _within(cols, column_conductance(Block(b.rows, cols), mat), size, True)
        elif variant == "within_asc":
            cols = _within(cols, column_conductance(Block(b.rows, cols), mat), size, False)
        blocks.append(Block(b.rows, cols))
    return layer.with_blocks(blocks)
