"""Evaluation metrics shared by training, simulation and the methods."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def accuracy(model: nn.Module, data: Iterable, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over ``data``, an iterable of (x, y) batches."""
    model.eval()
    correct = total = 0
    for x, y in data:
        x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)
