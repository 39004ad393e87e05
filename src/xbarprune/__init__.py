"""xbarprune: crossbar-aware compression and non-ideal simulation for memristive accelerators."""

from xbarprune.errors import XbarpruneError

__version__ = "0.1.0"
__all__ = ["XbarpruneError", "__version__"]
