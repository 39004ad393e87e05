"""Which mapped layers a compression method touches: one :class:`LayerSelection` for every method.

Every method's ``Params`` keeps its own YAML keys (``exclude``, ``skip_first`` / ``skip_last``,
``exclude_first_last``, ``layers: conv | all``, trannsformer's ``layers``) and maps them onto a
``LayerSelection``; :meth:`LayerSelection.select` is the one place that applies them, so that
(for the all-methods benchmark) the same keys prune the same layers in every method.

The rules, applied in this order to the layers of a layout (result in the layout's order):

1. ``include`` (explicit names; empty = every layer);
2. ``kinds`` (``"conv"`` / ``"linear"``; None = every kind);
3. ``keep_first`` / ``keep_last``: the first / last mapped layer of the *whole* layout stays
   dense (``keep_last="linear"``: only when that layer is a Linear, e.g. the classifier), and
   only when the layout has at least ``first_last_min_layers`` layers;
4. ``exclude``: exact names, or :mod:`fnmatch` patterns (``"features.*"``).

Idea after Torch-Pruning's ``ignored_layers`` on its base pruner (Fang et al., "DepGraph",
CVPR 2023); written for crossbar layouts here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from xbarprune.errors import ConfigError

_GLOB = set("*?[")
KINDS = ("conv", "linear")


def is_pattern(name: str) -> bool:
    """Whether ``name`` is an fnmatch pattern (holds ``*``, ``?`` or ``[``)."""
    return any(c in _GLOB for c in name)


def unknown_names(names: Iterable[str], layers: Iterable[str]) -> list[str]:
    """Entries of ``names`` that are neither a layer of ``layers`` nor a pattern matching one."""
    layers = list(layers)
    out = []
    for n in names:
        if is_pattern(n):
            if not any(fnmatchcase(x, n) for x in layers):
                out.append(n)
        elif n not in layers:
            out.append(n)
    return out


@dataclass(frozen=True)
class LayerSelection:
    """The layers a method prunes (see the module docstring for the rules and their order).

    Attributes:
        exclude: names or fnmatch patterns left dense.
        include: explicit names to consider (empty: every mapped layer).
        kinds: layer kinds to consider (``"conv"``, ``"linear"``); None: every kind.
        keep_first: keep the first mapped layer dense.
        keep_last: keep the last mapped layer dense; ``"linear"``: only when it is a Linear.
        first_last_min_layers: the first/last rules apply only to layouts with at least this
            many layers.
        where: the config prefix named in errors (``method.params``).
        exclude_key / include_key: the YAML keys named in errors.
    """

    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    kinds: tuple[str, ...] | None = None
    keep_first: bool = False
    keep_last: bool | Literal["linear"] = False
    first_last_min_layers: int = 1
    where: str = "method.params"
    exclude_key: str = "exclude"
    include_key: str = "include"

    def __post_init__(self) -> None:
        if self.kinds is not None:
            bad = [k for k in self.kinds if k not in KINDS]
            if bad:
                raise ConfigError(
                    f"{self.where}: layer kind(s) {', '.join(map(repr, bad))}; "
                    f"allowed: {', '.join(KINDS)}"
                )
        if self.keep_last not in (True, False, "linear"):
            raise ConfigError(f"{self.where}: keep_last = {self.keep_last!r}; allowed: "
                              "true, false, 'linear'")  # fmt: skip

    def select(self, layout: Any) -> list[str]:
        """Names of the selected layers, in the layout's order.

        ``layout`` is a :class:`~xbarprune.mapping.layout.CrossbarLayout` (its ``layers``
        give each name's ``kind``) or a plain mapping name -> kind. Raises
        :class:`ConfigError` naming ``method.params.exclude`` (or ``include``) for a name that
        is not a layer, or a pattern that matches none.
        """
        kinds = _kinds(layout)
        names = list(kinds)
        for key, given in ((self.exclude_key, self.exclude), (self.include_key, self.include)):
            bad = unknown_names(given, names)
            if bad:
                raise ConfigError(
                    f"{self.where}.{key} names unknown layer(s): {', '.join(bad)}; "
                    f"the mapped layers are: {', '.join(names)}"
                )
        skip: set[str] = set()
        if names and len(names) >= self.first_last_min_layers:
            if self.keep_first:
                skip.add(names[0])
            if self.keep_last is True or (self.keep_last == "linear"
                                          and kinds[names[-1]] == "linear"):  # fmt: skip
                skip.add(names[-1])
        include = set(self.include)
        return [
            n
            for n in names
            if (not include or n in include)
            and (self.kinds is None or kinds[n] in self.kinds)
            and n not in skip
            and not any(fnmatchcase(n, e) if is_pattern(e) else n == e for e in self.exclude)
        ]


def _kinds(layout: Any) -> dict[str, str]:
    layers = getattr(layout, "layers", layout)
    if not isinstance(layers, Mapping):
        raise TypeError(f"LayerSelection.select: expected a layout or a mapping, got {layout!r}")
    return {n: (v if isinstance(v, str) else v.kind) for n, v in layers.items()}
