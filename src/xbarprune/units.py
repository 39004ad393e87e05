"""Parsing of human time spans ("1s", "1h", "1d", "1y", 3.15e7) used for drift times."""

from __future__ import annotations

import re

from xbarprune.errors import SpecError

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "min": 60.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "mo": 2629800.0,
    "y": 31557600.0,
}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")


def parse_time(value: str | float | int) -> float:
    """Seconds from a number or a string with unit s/min/h/d/w/mo/y (year = 365.25 d)."""
    if isinstance(value, bool):
        raise SpecError(f"time {value!r} is not a duration")
    if isinstance(value, int | float):
        t = float(value)
    else:
        m = _RE.match(str(value).lower())
        if not m or (m.group(2) and m.group(2) not in _UNITS):
            raise SpecError(
                f"time {value!r} is not a duration; use seconds or a number with one of the "
                f"units {', '.join(_UNITS)} (e.g. '1h', '1d', '1y')"
            )
        t = float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1.0)
    if t < 0 or t != t or t == float("inf"):
        raise SpecError(
            f"time after programming must be a finite number of seconds >= 0, got {value!r}"
        )
    return t


def format_time(seconds: float) -> str:
    """Short label: 1s, 1h, 1d, 1y ... (the largest unit that divides evenly, else seconds)."""
    for unit, f in (("y", 31557600.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        q = seconds / f
        if q >= 1 and abs(q - round(q)) < 1e-9:
            return f"{round(q)}{unit}"
    return f"{seconds:g}s"
