"""Small validation helpers shared by the effects (each naming the field it checks)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from xbarprune.errors import SpecError, check_range


def check_choice(name: str, value: object, allowed: Iterable[str]) -> None:
    """Raise :class:`SpecError` naming ``name`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise SpecError(f"{name} = {value!r}; allowed: {', '.join(repr(a) for a in allowed)}")


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> None:
    """Raise :class:`SpecError` unless ``value`` is an integer in ``[low, high]``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok:
        ok = value >= low and (high is None or value <= high)
    if not ok:
        rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise SpecError(f"{name} = {value!r}; allowed: {rng}")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{name} = {value!r}; allowed: a number")
    return float(value)


def check_nonneg(name: str, value: float, *, finite: bool = True) -> None:
    """``value`` must be a number >= 0 (NaN rejected; infinity too unless ``finite=False``)."""
    v = _number(name, value)
    check_range(name, v, low=0.0)
    if finite and not math.isfinite(v):
        raise SpecError(f"{name} = {value!r} is out of range; allowed: [0, inf)")


def check_prob(name: str, value: float) -> None:
    """``value`` must be a probability in [0, 1]."""
    check_range(name, _number(name, value), low=0.0, high=1.0)


def check_positive(name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    v = _number(name, value)
    check_range(name, v, low=0.0, low_open=True)
    if not math.isfinite(v):
        raise SpecError(f"{name} = {value!r} is out of range; allowed: (0, inf)")
