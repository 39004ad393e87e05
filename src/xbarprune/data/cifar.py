"""Reader for the CIFAR-10 / CIFAR-100 "python version" pickles (A. Krizhevsky, 2009).

Layout (as extracted from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch   (b"data", b"labels")
    cifar-100-python/train, test                                    (b"data", b"fine_labels",
                                                                     b"coarse_labels")

Each file is a pickled dict whose ``data`` is a uint8 array (N, 3072): 1024 red, 1024 green,
1024 blue values per image, row-major 32 x 32.

**Safety.** Unpickling can run arbitrary code. These files are read with a restricted
unpickler (:class:`SafeUnpickler`) that resolves only the few globals needed to rebuild plain
containers and numpy arrays (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``, ``numpy.core.numeric._frombuffer``, ``_codecs.encode`` and basic builtins);
anything else raises :class:`~xbarprune.errors.DataError`. A hostile file can still make the
unpickler allocate memory, so only read files from sources you trust.
"""

from __future__ import annotations

import builtins
import codecs
import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from xbarprune.errors import DataError

__all__ = ["SafeUnpickler", "safe_pickle_load", "read_cifar_file", "CIFAR_LAYOUT"]

_SAFE_BUILTINS = frozenset(
    {
        "set",
        "frozenset",
        "bytearray",
        "bytes",
        "list",
        "dict",
        "tuple",
        "str",
        "int",
        "float",
        "complex",
        "bool",
        "slice",
        "range",
    }
)
_SAFE_NUMPY = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}

#: name -> (folder, train files, test files, label key)
CIFAR_LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels"),
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds builtins containers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if (module, name) in _SAFE_NUMPY:
            # numpy 2 moved numpy.core to numpy._core; resolve whichever exists.
            for mod in (module.replace("numpy.core", "numpy._core"), module):
                try:
                    return getattr(importlib.import_module(mod), name)
                except (ImportError, AttributeError):
                    continue
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only numpy arrays and plain containers "
            "are allowed in dataset pickles"
        )


def safe_pickle_load(path: str | os.PathLike[str]) -> Any:
    """Load a pickle with :class:`SafeUnpickler` (``encoding="bytes"`` for Python 2 files)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"file not found: {p}") from exc
    except OSError as exc:
        raise DataError(f"{p}: cannot read: {exc}") from exc
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{p}: not a safe dataset pickle: {exc}") from exc
    except Exception as exc:  # EOFError, ValueError, ... from truncated or foreign files
        raise DataError(f"{p}: corrupt or truncated pickle: {type(exc).__name__}: {exc}") from exc


def _get(d: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
    raise DataError(f"{path}: CIFAR batch has no {key!r} entry (has {keys})")


def read_cifar_file(path: str | os.PathLike[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file -> (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    p = Path(path)
    d = safe_pickle_load(p)
    if not isinstance(d, dict):
        raise DataError(f"{p}: expected a pickled dict, got {type(d).__name__}")
    data = np.asarray(_get(d, "data", p))
    labels = np.asarray(_get(d, label_key, p))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{p}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(
            f"{p}: {len(data)} images but labels of shape {labels.shape} under {label_key!r}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{p}: labels must be integers, got {labels.dtype}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
