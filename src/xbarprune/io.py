"""Atomic file output and safe checkpoint loading (DESIGN.md, Conventions: Files)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from xbarprune.errors import CheckpointError, XbarpruneError


class OutputError(XbarpruneError):
    """An output location cannot be written."""


def ensure_dir(path: str | Path) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {p}: {exc.strerror or exc}") from exc
    if not os.access(p, os.W_OK):
        raise OutputError(f"output directory {p} is not writable")
    return p


def _atomic(path: Path, write) -> None:
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_checkpoint(path: str | Path, obj: dict) -> None:
    """torch.save to a temp file + rename: a crash never leaves a half-written checkpoint."""
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; corrupt/truncated files -> CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {p} is corrupt or truncated and cannot be loaded ({exc}); delete it "
            "to recompute that stage"
        ) from exc
    except Exception as exc:  # unpickling of disallowed objects
        raise CheckpointError(
            f"checkpoint {p} holds objects that are not allowed with weights_only=True ({exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {p} does not hold a dict (got {type(obj).__name__})")
    return obj


def load_state_into(model: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict with a clear error when the checkpoint is from another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"checkpoint {source} does not match the model (another architecture or width?): "
            + " ".join(first)
        ) from exc
