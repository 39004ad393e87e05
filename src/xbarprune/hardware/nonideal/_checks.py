"""The validation helpers of the effects; they live in :mod:`xbarprune.checks` (core layer)."""

from xbarprune.checks import check_choice, check_int, check_nonneg, check_positive, check_prob

__all__ = ["check_choice", "check_int", "check_nonneg", "check_positive", "check_prob"]
