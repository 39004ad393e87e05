"""The common interface of every device non-ideality (DESIGN.md `hardware/nonideal/`).

Every effect is a small frozen dataclass with one method, ``apply(g, ctx) -> g'``: cell
conductances in siemens in, conductances out, all random draws from ``ctx.generator``.
Conductances arrive in the *physical tile view* ``(T, rows, cols)`` of one layer (T tiles of
the crossbar), so tile-aware effects (row/column faults, IR drop) see the geometry; ``ctx.used``
marks the cells that hold a weight or reference (unused cells sit at g_min and carry no input).

Effects run in the order of their ``stage``:
``program`` (once per Monte Carlo trial: quantisation, aging, programming variation, stuck-at
faults) -> ``time`` (once per trial, at ``ctx.time_s`` seconds after programming: drift) ->
``circuit`` (once per trial, input independent: IR drop as effective conductances) ->
``read`` (every inference: read noise).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec

Stage = Literal["program", "time", "circuit", "read"]
STAGE_ORDER: tuple[Stage, ...] = ("program", "time", "circuit", "read")


@dataclass
class EffectContext:
    """What an effect may read besides the conductances.

    Attributes:
        device: the cell description (window, levels).
        crossbar: the tile description (rows, cols, encoding).
        generator: the only source of randomness; must live on ``g``'s device.
        time_s: seconds since programming at which the inference happens (>= 0).
        used: bool mask (T, rows, cols) of cells that hold a weight/reference, or None (all).
    """

    device: DeviceSpec
    crossbar: CrossbarSpec
    generator: torch.Generator
    time_s: float = 1.0
    used: Tensor | None = None


class ConductanceEffect(ABC):
    """One non-ideality: ``apply(g, ctx)`` maps conductances (T, rows, cols) to conductances."""

    stage: ClassVar[Stage] = "program"

    @property
    def elementwise(self) -> bool:
        """True if the effect treats every cell alike, independent of its position in a tile
        (then the simulator may apply it to the cell tensor without building the tile view)."""
        return self.stage != "circuit"

    @property
    def is_ideal(self) -> bool:
        """True if the settings make the effect a no-op (zero rate, sigma, exponent or
        resistance); :meth:`NonIdealityModel.from_config` then leaves it out, so an ideal
        model has no effects at all. The default is False (the effect always runs)."""
        return False

    @abstractmethod
    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:  # pragma: no cover - interface
        """Return the perturbed conductances (same shape, dtype and device as ``g``)."""

    def apply_tracked(self, g: Tensor, ref: Tensor, ctx: EffectContext) -> tuple[Tensor, Tensor]:
        """``(apply(g), ref')`` where ``ref`` holds the conductances a read right after
        programming sees (the reference of drift compensation). An effect that acts after
        programming leaves it unchanged (the default); one that also models programming noise
        (:class:`~xbarprune.hardware.nonideal.pcm.PCMStatistical`) returns its programmed
        state, as aihwkit reads the tile right after programming."""
        return self.apply(g, ctx), ref


def randn(shape, ctx: EffectContext, like: Tensor) -> Tensor:
    """Standard normal draws from ``ctx.generator`` on ``like``'s device and dtype."""
    return torch.randn(shape, generator=ctx.generator, device=like.device, dtype=like.dtype)


def rand(shape, ctx: EffectContext, like: Tensor) -> Tensor:
    """Uniform [0, 1) draws from ``ctx.generator`` on ``like``'s device and dtype."""
    return torch.rand(shape, generator=ctx.generator, device=like.device, dtype=like.dtype)
