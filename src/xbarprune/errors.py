"""One exception family for every error a user can act on (DESIGN.md, Conventions)."""

from __future__ import annotations


class XbarpruneError(Exception):
    """Base class: every error raised on purpose by xbarprune derives from it."""


class SpecError(XbarpruneError, ValueError):
    """An invalid hardware or simulation parameter (names the field and the allowed range)."""


class ConfigError(XbarpruneError, ValueError):
    """A bad configuration file or section (unknown key, wrong type, bad value)."""


class MappingError(XbarpruneError):
    """A layer cannot be mapped onto crossbars."""


class UnsupportedLayerError(MappingError):
    """A layer type or layer option that the mapping does not support."""


class CrossbarTooSmallError(MappingError, SpecError):
    """The crossbar cannot hold even one weight with the chosen encoding."""


class CheckpointError(XbarpruneError):
    """A checkpoint is missing, corrupt, truncated or belongs to another model."""


class DataError(XbarpruneError):
    """A dataset is missing, malformed or incompatible."""


class CompressionError(XbarpruneError):
    """A compression method was given impossible settings (e.g. a budget larger than the layer)."""


class TrainingError(XbarpruneError):
    """Training cannot go on (e.g. the loss became infinite or NaN)."""


def check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise :class:`SpecError` naming ``name`` unless ``value`` lies in the given range."""
    ok = True
    if value != value:  # NaN
        ok = False
    if low is not None and (value <= low if low_open else value < low):
        ok = False
    if high is not None and (value >= high if high_open else value > high):
        ok = False
    if not ok:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise SpecError(f"{name} = {value!r} is out of range; allowed: {lo}, {hi}")


class ExportError(XbarpruneError):
    """A model cannot be exported (unknown format, unfinished run, failed check)."""


class TranslationError(ConfigError):
    """A setting has no counterpart in another simulator's configuration (names each one)."""
