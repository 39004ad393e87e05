"""A layer's weights as the mapped matrix (rows = inputs, columns = outputs).

Conv2d weight (O, I, kh, kw) -> matrix (I*kh*kw, O) with row index ``i*kh*kw + y*kw + x``
(the order of :func:`torch.nn.functional.unfold`); Linear weight (O, I) -> (I, O).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from xbarprune.errors import UnsupportedLayerError

MAPPABLE = (nn.Conv2d, nn.Linear)
_REFUSED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def check_mappable(name: str, module: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` for layers the crossbar mapping cannot place."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise UnsupportedLayerError(
                f"layer '{name}': Conv2d with groups={module.groups} (grouped/depthwise) is not "
                "supported by the crossbar mapping; only groups=1 convolutions are mapped"
            )
        if module.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"layer '{name}': padding_mode='{module.padding_mode}' is not supported; "
                "use padding_mode='zeros'"
            )
        return
    if isinstance(module, nn.Linear):
        return
    raise UnsupportedLayerError(
        f"layer '{name}' ({type(module).__name__}) cannot be mapped onto crossbars; "
        "supported: nn.Conv2d (groups=1) and nn.Linear"
    )


def is_refused(module: nn.Module) -> bool:
    """Compute layers we recognise but do not map (they would silently stay digital)."""
    return isinstance(module, _REFUSED) or (isinstance(module, nn.Conv2d) and module.groups != 1)


def weight_to_matrix(weight: Tensor) -> Tensor:
    """Layer weight -> mapped matrix (R, C) (a view-compatible reshape + transpose)."""
    if weight.dim() == 4:
        return weight.reshape(weight.shape[0], -1).t()
    if weight.dim() == 2:
        return weight.t()
    raise UnsupportedLayerError(f"cannot map a weight of shape {tuple(weight.shape)}")


def matrix_to_weight(mat: Tensor, weight_shape: tuple[int, ...]) -> Tensor:
    """Mapped matrix (R, C) -> layer weight of ``weight_shape`` (inverse of weight_to_matrix)."""
    return mat.t().reshape(weight_shape)


def matrix_shape(weight_shape: tuple[int, ...]) -> tuple[int, int]:
    o = weight_shape[0]
    r = 1
    for d in weight_shape[1:]:
        r *= d
    return r, o


def conv_unfold(module: nn.Conv2d, x: Tensor) -> tuple[Tensor, int, int]:
    """im2col of a Conv2d's input: ``(B, R, L)`` patches in mapped-matrix row order and the
    output height and width. String paddings work as in ``nn.Conv2d``: ``"valid"`` is 0 and
    ``"same"`` pads ``dilation * (k - 1)`` in total, the odd pixel at the bottom/right, exactly
    as PyTorch does."""
    m = module
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pad: tuple[int, ...] = (0, 0)
        else:  # "same" (PyTorch allows it with stride 1 only)
            tot = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
            x = F.pad(x, (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2))
            pad = (0, 0)
    else:
        pad = tuple(m.padding)
    H, W = x.shape[-2:]
    cols = F.unfold(x, m.kernel_size, m.dilation, pad, m.stride)
    ho = (H + 2 * pad[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
    wo = (W + 2 * pad[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[1] + 1
    return cols, ho, wo
