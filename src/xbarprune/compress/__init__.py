"""Compression methods on the crossbar layout: regularisers, pruners, the method registry."""

from xbarprune.compress.base import (
    CompressContext,
    CompressResult,
    Method,
    get_method,
    list_methods,
    register,
)
from xbarprune.compress.parts.pruning import group_sparsity, magnitude_masks, weight_sparsity

__all__ = [
    "CompressContext",
    "CompressResult",
    "Method",
    "get_method",
    "group_sparsity",
    "list_methods",
    "magnitude_masks",
    "register",
    "weight_sparsity",
]
