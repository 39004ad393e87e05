"""Which weights of a model sit on crossbars, and which stay digital (issue #16, item 6).

A weight here is a parameter of two or more dimensions (a matrix or a kernel); biases and
BatchNorm parameters are digital by design and not counted. A layer stays digital when the
mapping does not place it: a layer type without a crossbar path (``nn.LSTM``, ``nn.Bilinear``,
``nn.Embedding``, grouped convolutions), the internals of ``nn.MultiheadAttention`` (PyTorch reads
its projection weights directly, so they cannot be swapped for crossbar layers), bare parameters
used through functional calls, and the layers a config leaves digital on purpose
(``model.digital``). The report and ``xbarprune map`` list them with their weight counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from xbarprune.errors import SpecError
from xbarprune.hardware.spec import CrossbarSpec
from xbarprune.mapping.matrix import MAPPABLE, is_refused


def matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """``name`` matches one of ``patterns`` (exact or ``fnmatch``), or lies inside a module
    that does."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def attention_internals(model: nn.Module) -> set[str]:
    """Names of the submodules of every ``nn.MultiheadAttention`` (its ``out_proj``): PyTorch's
    attention reads their weights directly, so they cannot run through a crossbar layer."""
    inner: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            for sub, _ in mod.named_modules():
                if sub:
                    inner.add(f"{name}.{sub}" if name else sub)
    return inner


@dataclass
class Coverage:
    """Weights on crossbars and the layers that stay digital."""

    mapped_weights: int
    total_weights: int
    digital: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fraction_on_crossbars(self) -> float:
        return self.mapped_weights / self.total_weights if self.total_weights else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mapped_weights": self.mapped_weights,
            "total_weights": self.total_weights,
            "fraction_on_crossbars": self.fraction_on_crossbars,
            "digital": list(self.digital),
        }


def _reason(mod: nn.Module, name: str, mha: set[str], explicit: bool) -> str:
    if explicit:
        return "left digital by model.digital"
    if name in mha:
        return "inside nn.MultiheadAttention, which reads its weights directly"
    if is_refused(mod):
        return "no crossbar mapping for this layer type or option"
    if isinstance(mod, MAPPABLE):
        return "not in the layout"
    return f"no crossbar mapping for {type(mod).__name__}"


def coverage(model: nn.Module, layout: Any, digital: tuple[str, ...] = ()) -> Coverage:
    """Count the weights the ``layout`` places and list every module whose weights it does not.

    Each entry of ``Coverage.digital``: ``name`` (``""`` for the root module's own parameters),
    ``type``, ``weights`` (elements of its unmapped parameters of >= 2 dimensions), ``params``
    (their names) and ``reason``.
    """
    mapped = set(layout.layers)
    mha = attention_internals(model)
    total = on = 0
    out: list[dict[str, Any]] = []
    for name, mod in model.named_modules():
        own = [(pn, p) for pn, p in mod.named_parameters(recurse=False) if p.dim() >= 2]
        if not own:
            continue
        n = sum(p.numel() for _, p in own)
        total += n
        if name in mapped and isinstance(mod, MAPPABLE):
            # the layer's weight is on crossbars; any other matrix it owns is not
            rest = [(pn, p) for pn, p in own if pn != "weight"]
            on += n - sum(p.numel() for _, p in rest)
            own = rest
            if not own:
                continue
        out.append(
            {
                "name": name,
                "type": type(mod).__name__,
                "weights": sum(p.numel() for _, p in own),
                "params": [pn for pn, _ in own],
                "reason": _reason(mod, name, mha, matches(name, digital) if name else False),
            }
        )
    return Coverage(on, total, out)


def check_tile_memory(
    model: nn.Module,
    crossbar: CrossbarSpec,
    budget_gb: float,
    digital: tuple[str, ...] = (),
) -> None:
    """Refuse a mapping whose largest layer would need a tile tensor (tiles x rows x cols
    float32 conductances, as the simulator holds them) above ``budget_gb``, naming the size."""
    mha = attention_internals(model)
    for name, mod in model.named_modules():
        if not isinstance(mod, MAPPABLE) or is_refused(mod) or name in mha:
            continue
        if matches(name, digital):
            continue
        w = mod.weight
        rows = math.prod(w.shape[1:])
        cols = w.shape[0]
        tiles = crossbar.tiles(rows, cols)
        gb = tiles * crossbar.rows * crossbar.cols * 4 / 2**30
        if gb > budget_gb:
            raise SpecError(
                f"crossbar: layer '{name}' would need {tiles} tile(s) of {crossbar.rows}x"
                f"{crossbar.cols} cells = {gb:.3g} GiB of conductances, above "
                f"runtime.max_tile_memory_gb = {budget_gb:g}; choose a smaller crossbar.rows / "
                "crossbar.cols or raise the budget"
            )
