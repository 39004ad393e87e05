"""The table of registered models (name -> builder, description) and :func:`register_model`.

Below both :mod:`xbarprune.models.zoo` (whose builders register themselves here) and
:mod:`xbarprune.models.registry` (which builds by name), so neither imports the other back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from xbarprune.errors import ConfigError

__all__ = ["REGISTRY", "ModelEntry", "register_model"]


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    description: str


REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, description: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(*, num_classes, in_channels, image_size, width, **kw)``.

    ``description`` is the one line shown by :func:`xbarprune.models.list_models`.
    """
    key = name.lower()
    if ":" in key:
        raise ConfigError(f"model name {name!r} may not contain ':' (reserved for import paths)")

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if key in REGISTRY:
            raise ConfigError(f"model {name!r} is already registered")
        REGISTRY[key] = ModelEntry(builder, description)
        return builder

    return deco
