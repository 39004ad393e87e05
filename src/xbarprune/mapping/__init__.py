"""Mapping of Conv2d/Linear layers onto crossbar tiles, group index tensors, permutations."""

from xbarprune.mapping.layout import (
    GROUP_KINDS,
    Block,
    CrossbarLayout,
    Groups,
    LayerLayout,
    layer_matrices,
    map_model,
    mappable_layers,
)
from xbarprune.mapping.matrix import matrix_to_weight, weight_to_matrix
from xbarprune.mapping.permute import (
    channel_order_to_rows,
    compact,
    pack_columns,
    pack_for_kind,
    pack_rows,
    packed_tile_count,
    permuted,
)

__all__ = [
    "GROUP_KINDS",
    "Block",
    "CrossbarLayout",
    "Groups",
    "LayerLayout",
    "channel_order_to_rows",
    "compact",
    "layer_matrices",
    "map_model",
    "mappable_layers",
    "matrix_to_weight",
    "pack_columns",
    "pack_for_kind",
    "pack_rows",
    "packed_tile_count",
    "permuted",
    "weight_to_matrix",
]
