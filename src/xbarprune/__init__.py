"""xbarprune: crossbar-aware compression and non-ideal simulation for memristive accelerators.

Python API (docs/api.md): :func:`load_run` reads a finished run directory (dense and
compressed models, layouts, configs); :func:`simulate` runs a Monte Carlo non-ideal
evaluation of any model on a crossbar layout.
"""

from typing import Any

from xbarprune._version import __version__
from xbarprune.errors import XbarpruneError

__all__ = ["XbarpruneError", "__version__", "load_run", "simulate"]


def load_run(path: Any) -> Any:
    """A finished run as a :class:`~xbarprune.experiment.export.LoadedRun`."""
    from xbarprune.experiment.export import load_run as _load_run

    return _load_run(path)


def simulate(model: Any, layout: Any, **kwargs: Any) -> list[dict]:
    """Monte Carlo accuracy per time (:func:`xbarprune.experiment.export.simulate`)."""
    from xbarprune.experiment.export import simulate as _simulate

    return _simulate(model, layout, **kwargs)
