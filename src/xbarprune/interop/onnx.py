"""ONNX export of a (compressed) model, checked with ``onnx.checker`` and ``onnxruntime``.

Needs the optional extra ``pip install xbarprune[export]`` (``onnx``, ``onnxruntime``). The
model is exported in eval mode on the CPU with PyTorch's TorchScript-based exporter (opset
17, dynamic batch axis); pruned weights are plain zeros of the exported initialisers (masks
folded in). The file is then checked twice: the ONNX checker validates the graph, and
onnxruntime's outputs on a test batch must equal PyTorch's to ``tol`` (max absolute
difference), else :class:`~xbarprune.errors.ExportError`. Written atomically.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

from xbarprune.errors import ExportError
from xbarprune.io import atomic_write_bytes

OPSET = 17
INSTALL_HINT = "install the export extra: pip install 'xbarprune[export]' (onnx, onnxruntime)"


def _import():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs onnx and onnxruntime ({exc}); {INSTALL_HINT}"
        ) from exc
    return onnx, onnxruntime


def to_onnx_bytes(model: nn.Module, example: Tensor) -> bytes:
    """Serialised ONNX model of ``model`` (a CPU copy in eval mode) traced on ``example``."""
    m = copy.deepcopy(model).cpu().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        try:
            torch.onnx.export(
                m,
                (example.cpu(),),
                # the TorchScript exporter (dynamo=False) writes to a file object too; torch's
                # annotation names only paths
                buf,  # type: ignore[arg-type]
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=OPSET,
            )
        except Exception as exc:  # the exporter's own errors (unsupported operator...)
            raise ExportError(
                f"PyTorch cannot export {type(model).__name__} to ONNX ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
    return buf.getvalue()


def check_onnx(data: bytes, model: nn.Module, batch: Tensor, tol: float = 1e-5) -> dict:
    """Validate ``data`` with ``onnx.checker`` and compare onnxruntime to PyTorch on ``batch``.

    Returns ``{"max_abs_diff", "nodes", "ops", "initializers", "parameters"}``; raises
    :class:`ExportError` when the checker fails or the outputs differ by more than ``tol``.
    """
    onnx, ort = _import()
    proto = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {exc}") from exc
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    m = copy.deepcopy(model).cpu().eval()
    x = batch.cpu().float()
    with torch.no_grad():
        y = m(x).numpy()
    y_ort = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if y_ort.shape != y.shape:
        raise ExportError(f"onnxruntime output shape {y_ort.shape} != PyTorch's {y.shape}")
    diff = float(abs(y_ort - y).max()) if y.size else 0.0
    if not diff <= tol:
        raise ExportError(
            f"onnxruntime's outputs differ from PyTorch's by {diff:.3g} (> {tol:g}) on the test "
            "batch; the exported file is not written"
        )
    ops = Counter(n.op_type for n in proto.graph.node)
    return {
        "max_abs_diff": diff,
        "batch": int(x.shape[0]),
        "tolerance": tol,
        "nodes": len(proto.graph.node),
        "ops": dict(sorted(ops.items())),
        "initializers": len(proto.graph.initializer),
        "parameters": int(sum(p.numel() for p in m.parameters())),
        "opset": OPSET,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def export_onnx(model: nn.Module, example: Tensor, path: str | Path, *, tol: float = 1e-5) -> dict:
    """Export ``model`` to ``path`` (ONNX), checked on ``example`` before the file is written.

    Returns the check report of :func:`check_onnx` plus ``bytes`` (the file size).
    """
    data = to_onnx_bytes(model, example[:1])
    info = check_onnx(data, model, example, tol=tol)
    atomic_write_bytes(path, data)
    info["bytes"] = len(data)
    return info
