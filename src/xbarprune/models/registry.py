"""Model registry: names -> builders, plus user models by import path.

``build_model("lenet5")`` builds a registered model; ``build_model("import:pkg.mod:Name")``
(or just ``"pkg.mod:Name"``) imports ``Name`` from ``pkg.mod`` and calls it. ``Name`` must be a
``torch.nn.Module`` subclass: anything else (a function, ``os.system``, a builtin) is refused
before it is called, so a config cannot run an arbitrary callable. Importing the module runs
its top-level code, as any Python import does; modules are searched on ``sys.path``
(``PYTHONPATH``, installed packages) and in the current working directory.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import xbarprune.models.zoo  # noqa: F401  (registers the built-in models)
from xbarprune.errors import ConfigError
from xbarprune.models.catalog import REGISTRY as _REGISTRY
from xbarprune.models.catalog import register_model

__all__ = ["build_model", "list_models", "register_model", "IMPORT_PREFIX"]

IMPORT_PREFIX = "import:"
_STANDARD_ARGS = ("num_classes", "in_channels", "image_size", "width")


def list_models() -> dict[str, str]:
    """Registered model names -> one-line descriptions (sorted by name)."""
    return {k: _REGISTRY[k].description for k in sorted(_REGISTRY)}


def _import_object(target: str) -> Any:
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(
            f"model.name: import path {target!r} must look like 'import:package.module:ClassName'"
        )
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # user models next to the config, as `python -m` would find them
        sys.path.append(cwd)
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError, or any error raised while importing user code
        raise ConfigError(
            f"model.name: cannot import module {mod_name!r} for {target!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"model.name: module {mod_name!r} has no attribute {attr!r}") from exc
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        what = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise ConfigError(
            f"model.name: {target!r} resolved to {what!r} "
            f"({getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', attr)}), which is "
            "not a torch.nn.Module subclass; import: takes nn.Module classes only"
        )
    return obj


def _accepted(fn: Callable[..., Any], names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` the callable takes by name (explicit parameters only)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in sig.parameters.items() if n in names and p.kind in kinds}


def _check_options(name: str, builder: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    sig = inspect.signature(builder)
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        options = sorted(n for n in params if n not in _STANDARD_ARGS)
        raise ConfigError(
            f"model {name!r} has no option(s) {unknown}; its options are {options or 'none'}"
        )


def _build_import(target: str, standard: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    obj = _import_object(target)
    call_kwargs = {k: v for k, v in standard.items() if k in _accepted(obj, _STANDARD_ARGS)}
    call_kwargs.update(kwargs)
    try:
        model = obj(**call_kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"calling {target!r} with {sorted(call_kwargs)} failed: {exc}. Standard arguments "
            f"{list(_STANDARD_ARGS)} are passed only where the callable names them; other "
            "keyword arguments are passed as given."
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{target!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    width: float = 1.0,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by registered name or by import path.

    Args:
        name: a name from :func:`list_models` (case-insensitive), or
            ``"import:package.module:Attr"`` / ``"package.module:Attr"`` where ``Attr`` is an
            ``nn.Module`` subclass or a factory returning one. For imported models the standard
            arguments (``num_classes``, ``in_channels``, ``image_size``, ``width``) are passed
            only if the callable has parameters of those names; ``kwargs`` are always passed.
        num_classes: number of outputs.
        in_channels: input image channels.
        image_size: input height = width in pixels.
        width: channel multiplier for hidden layers (1.0 = the published sizes).
        seed: if given, parameters are initialised from ``torch.manual_seed(seed)`` inside a
            forked RNG, so the result is reproducible and the global RNG is left untouched.
        **kwargs: model-specific options (see each builder's docstring).

    Raises:
        ConfigError: unknown name (the message lists the known ones), bad option, failed
            import, or an imported object that does not yield an ``nn.Module``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{arg} = {value!r}; allowed: an integer >= 1")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size = {image_size!r}; allowed: an integer >= 1")
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ConfigError(f"width = {width!r}; allowed: a number > 0")
    standard = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "width": float(width),
    }
    key = name.strip()
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if key.lower() in _REGISTRY:
            entry = _REGISTRY[key.lower()]
            _check_options(key, entry.builder, kwargs)
            model = entry.builder(**standard, **kwargs)
        elif key.startswith(IMPORT_PREFIX) or ":" in key:
            target = key[len(IMPORT_PREFIX) :] if key.startswith(IMPORT_PREFIX) else key
            model = _build_import(target, standard, kwargs)
        else:
            known = ", ".join(sorted(_REGISTRY))
            raise ConfigError(
                f"model.name: unknown model {name!r}; known models: {known}; or a user model as "
                "'import:package.module:ClassName'"
            )
    # How to rebuild this model (for checkpoints); a module that forbids new attributes
    # simply goes without.
    with contextlib.suppress(Exception):
        setattr(model, "build_spec", {"name": key, **standard, "seed": seed, **kwargs})  # noqa: B010
    return model
