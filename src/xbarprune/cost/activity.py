"""Activity: how many matrix-vector multiplications (MVMs) each mapped layer runs per inference.

A Conv2d layer mapped as an (in·kh·kw × out) matrix runs one MVM per output position, i.e.
``H_out · W_out`` per image; a Linear layer runs one MVM per input vector (1 per sample, or one
per position of any leading non-batch dimensions, e.g. ``T`` for a ``(B, T, F)`` input). The
counts are measured with forward hooks on one dummy sample, so strides, padding, dilation,
pooling between layers and layers called several times are all accounted for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xbarprune.errors import SpecError
from xbarprune.mapping.matrix import MAPPABLE


def count_mvms(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    layers: Sequence[str] | None = None,
) -> dict[str, int]:
    """MVMs per inference (one sample) of every Conv2d / Linear layer of ``model``.

    Args:
        model: the network; it runs once, in eval mode and under ``torch.no_grad`` on the
            device and dtype of its first parameter (CPU if it has none); its train/eval
            mode is restored afterwards.
        input_shape: the shape of **one sample without the batch dimension**, e.g.
            ``(3, 32, 32)`` for CIFAR or ``(784,)`` for a flat MLP input.
        layers: restrict to these module names (default: every Conv2d/Linear).

    Returns:
        ``{layer_name: mvms}``; a layer that the forward pass never reaches counts 0.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise SpecError(
            f"count_mvms: input_shape = {tuple(input_shape)!r}; give the shape of one sample "
            "without the batch dimension, every size >= 1, e.g. (3, 32, 32)"
        )
    mods = {n: m for n, m in model.named_modules() if isinstance(m, MAPPABLE)}
    if layers is not None:
        missing = [n for n in layers if n not in mods]
        if missing:
            raise SpecError(
                f"count_mvms: no Conv2d/Linear layer named {', '.join(missing)}; "
                f"available: {', '.join(mods)}"
            )
        mods = {n: mods[n] for n in layers}
    counts = dict.fromkeys(mods, 0)

    def hook_for(name: str):
        def hook(mod: nn.Module, args, out) -> None:
            if isinstance(mod, nn.Conv2d):
                # (N, O, H, W) or unbatched (O, H, W): positions per sample
                counts[name] += int(out.shape[-1] * out.shape[-2])
            else:
                # (N, *, out_features): one MVM per input vector; N = 1 sample
                counts[name] += int(out.numel() // out.shape[-1])

        return hook

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    handles = [m.register_forward_hook(hook_for(n)) for n, m in mods.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts
