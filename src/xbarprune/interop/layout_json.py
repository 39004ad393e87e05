"""The crossbar layout as a JSON document for a downstream mapper.

The document says where every weight of every mapped layer goes (see
:mod:`xbarprune.mapping.layout` for the conventions):

* ``crossbar``: tile rows x columns, cells per weight, encoding, and the derived logical
  columns per tile (``weights_per_row``) and physical columns per weight;
* per layer: module name, kind, weight shape, mapped-matrix shape ``(R, C)`` (rows = inputs
  ``i*kh*kw + y*kw + x``, columns = outputs), the blocks (row and column index lists of the
  mapped matrix, and a hole mask where a block has one) and the tiles: for tile ``t``, the
  block it belongs to, ``rows[t]`` (the matrix row on each tile row, -1 = empty) and
  ``cols[t]`` (the matrix column on each logical column slot, -1 = empty), with the number
  of rows/columns that hold a non-zero weight and whether the tile is needed at all (an
  all-zero tile is freed). Physical column of logical slot ``c``, bit slice ``j``, sign ``s``:
  ``c*2k + 2j + s`` (differential) or ``c*k + j`` (offset; the last column is the reference).
"""

from __future__ import annotations

from dataclasses import asdict

from torch import nn

from xbarprune.mapping.layout import CrossbarLayout, layer_matrices

FORMAT = "xbarprune-layout-1"


def layout_document(layout: CrossbarLayout, model: nn.Module) -> dict:
    """Plain-dict layout of ``model`` on ``layout`` (JSON-serialisable)."""
    x = layout.crossbar
    mats = layer_matrices(model, layout)
    layers = []
    for lay in layout:
        mat = mats[lay.name]
        u = lay.tile_usage(mat)
        tiles = []
        for t in range(lay.n_tiles):
            tiles.append(
                {
                    "block": int(lay.tile_block[t]),
                    "rows": lay.tile_rows[t].tolist(),
                    "cols": lay.tile_cols[t].tolist(),
                    "rows_used": int(u["rows_used"][t]),
                    "cols_used": int(u["cols_used"][t]),
                    "nonzero": int(u["nonzero"][t]),
                    "needed": bool(u["active"][t]),
                }
            )
        d = lay.to_dict()
        layers.append(
            {
                "name": lay.name,
                "kind": lay.kind,
                "weight_shape": list(lay.weight_shape),
                "matrix_shape": list(lay.matrix_shape),
                "blocks": d["blocks"],
                "tiles_total": lay.n_tiles,
                "tiles_needed": int(u["active"].sum()),
                "tiles": tiles,
            }
        )
    return {
        "format": FORMAT,
        "crossbar": asdict(x)
        | {
            "weights_per_row": x.weights_per_row,
            "columns_per_weight": x.columns_per_weight,
            "reference_columns": x.reference_columns,
        },
        "tiles_total": layout.n_tiles,
        "tiles_needed": sum(r["tiles_needed"] for r in layers),
        "layers": layers,
    }
