"""Held-out selection, enforced by construction (issue #21, item 2).

Every data set :func:`~xbarprune.data.load_splits` returns carries its role (``"train"``,
``"val"`` or ``"test"``) on the dataset object itself. Code that *selects* (thresholds,
pruning ratios, lambdas, arm choice, "best" rows, sensitivities) asks for its data through
:func:`selection_data`, which refuses the test split and a missing validation split with one
clear error. The role survives the wrappers selection code uses (``DataLoader``, ``Subset``),
so a test split cannot reach a selection step by being wrapped first.

:func:`heldout_val_size` is the rule for studies: a run with no validation split gets one
carved from its training data (:data:`DEFAULT_VAL_FRACTION` of it, stratified by class with
the run's seed), never the test split.
"""

from __future__ import annotations

from typing import Any, Literal

from torch.utils.data import DataLoader, Subset

from xbarprune.errors import ConfigError

SplitRole = Literal["train", "val", "test"]

#: the validation fraction carved from the training data when a study gives none
DEFAULT_VAL_FRACTION = 0.1

#: the attribute that carries a dataset's role
_ROLE_ATTR = "xbarprune_split"


def mark_split(dataset: Any, role: SplitRole) -> Any:
    """Tag ``dataset`` (in place) with its role and return it."""
    if role not in ("train", "val", "test"):
        raise ConfigError(f"split role = {role!r}; allowed: train, val, test")
    setattr(dataset, _ROLE_ATTR, role)
    return dataset


def split_role(data: Any) -> str | None:
    """The role of ``data`` (a dataset, ``Subset`` or ``DataLoader`` of one), None if untagged."""
    seen = 0
    while data is not None and seen < 16:
        role = getattr(data, _ROLE_ATTR, None)
        if role is not None:
            return role
        if isinstance(data, DataLoader | Subset):
            data = data.dataset
            seen += 1
            continue
        return None
    return None


def selection_data(data: Any, what: str = "selection") -> Any:
    """``data`` if selection code may read it, else a :class:`ConfigError`.

    Refused: None / empty (no validation split: carve one with ``data.val_size``, default
    :data:`DEFAULT_VAL_FRACTION`) and anything tagged ``"test"`` (the test split is read
    only by the final measurement).
    """
    if data is None or (hasattr(data, "__len__") and len(data) == 0):
        raise ConfigError(
            f"{what} needs a validation split and none was given; set data.val_size > 0 "
            f"(a fraction in (0, 1) of the training data or a count; default "
            f"{DEFAULT_VAL_FRACTION:g}); the test split is never used for selection"
        )
    if split_role(data) == "test":
        raise ConfigError(
            f"{what} was handed the test split; selection reads the validation split only "
            "(data.val_size > 0 carves one from the training data)"
        )
    return data


def heldout_val_size(val_size: float | int | None) -> float | int:
    """The validation size a study runs with: ``val_size`` if positive, else
    :data:`DEFAULT_VAL_FRACTION` (a run always has a validation split)."""
    if val_size is None or val_size <= 0:
        return DEFAULT_VAL_FRACTION
    return val_size


__all__ = [
    "DEFAULT_VAL_FRACTION",
    "heldout_val_size",
    "mark_split",
    "selection_data",
    "split_role",
]
