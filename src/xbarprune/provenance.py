"""Provenance recorded with every run (core layer): library versions and the non-ideality
settings that were on. Used by the pipeline (``simulate.json``) and by ``report.json``."""

from __future__ import annotations

import platform
from typing import Any

import torch

from xbarprune._version import __version__
from xbarprune.config import to_dict


def describe_nonideal(cfg: Any) -> Any:
    """The non-ideality settings of an experiment config that are on (disabled sections
    omitted), with the preset name when ``cfg.nonideal`` names one."""
    on = {k: v for k, v in to_dict(cfg.nonideal_config()).items() if v not in (None, False)}
    return {"preset": cfg.nonideal, **on} if isinstance(cfg.nonideal, str) else on


def versions() -> dict[str, str]:
    """Versions of xbarprune, torch, numpy, Python (and torch_pruning when installed)."""
    import numpy

    v = {
        "xbarprune": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        import torch_pruning

        v["torch_pruning"] = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        pass
    return v
