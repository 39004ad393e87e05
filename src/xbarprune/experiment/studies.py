"""The study registry of ``xbarprune compare`` (``kind`` -> function) and the summary header.

Below :mod:`xbarprune.experiment.compare` (which runs a study by kind) and the ``*_compare``
modules (which register themselves with :func:`study`), so neither imports the other back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

STUDIES: dict[str, Callable[..., dict]] = {}


def study(name: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Decorator registering ``fn(data, *, out, quick, command, t0) -> summary`` as ``name``."""

    def deco(fn: Callable[..., dict]) -> Callable[..., dict]:
        STUDIES[name] = fn
        return fn

    return deco


def header(command: str, t0: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import platform

    import torch

    h = {
        "command": command,
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
    }
    h.update(extra or {})
    return h
