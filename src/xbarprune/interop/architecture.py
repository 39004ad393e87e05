"""A Torch-Pruning-free description of a physically shrunk model, and its reconstruction.

Unused Path Removal (:func:`xbarprune.compress.parts.purification.remove_unused_paths`, Ma et al.
ASP-DAC 2020, Sec. 5.1) and C/F pruning remove filters and channels with Torch-Pruning, which
rewrites the shapes of Conv2d/Linear/BatchNorm modules in place. The model's *class* and its
forward pass are unchanged; only per-module tensor shapes and the matching size attributes
(``out_channels``, ``in_features``, ``num_features``...) differ from the architecture the config
builds. So a shrunk model is fully described by

    {module name: {"type": class name, "attrs": {size attribute: value},
                   "tensors": {parameter/buffer name: shape}}}

for the modules whose shapes differ from the freshly built reference model
(:func:`describe_architecture`). :func:`apply_architecture` rebuilds it: it takes the reference
model, sets the attributes and replaces the tensors by empty ones of the stored shapes, after
which the checkpoint's ``state_dict`` loads. Nothing of Torch-Pruning is needed to reload, and
the description is plain JSON/``weights_only``-safe data.

Supported modules: ``Conv2d``, ``Linear``, ``BatchNorm1d/2d``, ``LayerNorm``, ``GroupNorm``
(with unchanged group count). Any other module whose shapes changed raises
:class:`~xbarprune.errors.CheckpointError` naming it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xbarprune.errors import CheckpointError

#: size attributes per module type, derived from the stored tensor shapes on rebuild.
_SIZE_ATTRS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
    nn.GroupNorm: ("num_channels",),
}

FORMAT = "xbarprune-architecture-1"


def _size_attrs(mod: nn.Module) -> tuple[str, ...] | None:
    for t, attrs in _SIZE_ATTRS.items():
        if type(mod) is t:
            return attrs
    return None


def _tensors(mod: nn.Module) -> dict[str, list[int]]:
    out = {n: list(p.shape) for n, p in mod.named_parameters(recurse=False)}
    out.update({n: list(b.shape) for n, b in mod.named_buffers(recurse=False) if b is not None})
    return out


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def describe_architecture(model: nn.Module, reference: nn.Module) -> dict | None:
    """The modules of ``model`` whose tensor shapes differ from ``reference``'s (None: none).

    ``reference`` is the model the config builds (same class and module names). Raises
    :class:`CheckpointError` when a module is missing from ``reference`` or is of a type whose
    size attributes we cannot rebuild.
    """
    ref = dict(reference.named_modules())
    changed: dict[str, dict] = {}
    for name, mod in model.named_modules():
        shapes = _tensors(mod)
        if not shapes:
            continue
        r = ref.get(name)
        if r is None or type(r) is not type(mod):
            raise CheckpointError(
                f"module '{name}' ({type(mod).__name__}) of the shrunk model is not in the "
                "architecture the config builds; a shrunk model must keep its module names"
            )
        if shapes == _tensors(r):
            continue
        attrs = _size_attrs(mod)
        if attrs is None:
            raise CheckpointError(
                f"module '{name}' ({type(mod).__name__}) changed shape, but only "
                f"{', '.join(t.__name__ for t in _SIZE_ATTRS)} can be rebuilt from a shape "
                "description"
            )
        changed[name] = {
            "type": type(mod).__name__,
            "attrs": {a: _plain(getattr(mod, a)) for a in attrs},
            "tensors": shapes,
        }
    if not changed:
        return None
    return {"format": FORMAT, "modules": changed}


def apply_architecture(model: nn.Module, arch: dict | None) -> nn.Module:
    """Reshape ``model`` (built from the config) in place to the description ``arch``.

    Parameters and buffers get empty tensors of the stored shapes (same dtype and device), so
    load the checkpoint's ``state_dict`` afterwards. ``arch = None`` leaves the model as is.
    """
    if arch is None:
        return model
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        got = arch.get("format") if isinstance(arch, dict) else arch
        raise CheckpointError(
            f"unknown architecture description (format {got!r}); expected {FORMAT!r}"
        )
    mods = dict(model.named_modules())
    for name, d in arch["modules"].items():
        mod = mods.get(name)
        if mod is None or type(mod).__name__ != d["type"]:
            raise CheckpointError(
                f"architecture description names module '{name}' ({d['type']}), which the "
                "model built from the config does not have"
            )
        for a, v in d["attrs"].items():
            setattr(mod, a, tuple(v) if isinstance(v, list) else v)
        for t, shape in d["tensors"].items():
            old = getattr(mod, t, None)
            if not isinstance(old, torch.Tensor):
                raise CheckpointError(f"module '{name}' has no tensor '{t}' to reshape")
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(mod, t, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                mod.register_buffer(t, new)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
