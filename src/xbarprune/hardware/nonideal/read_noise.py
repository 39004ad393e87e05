"""Read (cycle-to-cycle, thermal/shot/1-f) noise, drawn anew at every inference.

Equations (``N`` standard normal per cell, fresh for every call)::

    relative:  G' = G * (1 + sigma * N)
    absolute:  G' = G + sigma * (g_max - g_min) * N

then clamped at 0 S. Only cells in ``ctx.used`` are perturbed (the noise is drawn for all
cells, so the stream does not depend on the mask). Stage "read": the analog layer calls it on
every forward pass, so two calls with one generator differ, and re-seeding the generator
reproduces them.

Defaults: ``mode = "relative"``. Typical sigma 0.01-0.05 (e.g. 2 % for ReRAM; Bhattacharjee et
al. DATE 2022 table: 0.05 FeFET, 0.1 RRAM).

Reference: Joshi et al., "Accurate deep neural network inference using computational
phase-change memory", Nat. Commun. 2020 (read noise as additive Gaussian per read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from xbarprune.hardware.nonideal.base import Stage
from xbarprune.hardware.nonideal.variation import _Perturbation

ReadNoiseMode = Literal["relative", "absolute"]
READ_NOISE_MODES: tuple[str, ...] = ("relative", "absolute")


@dataclass(frozen=True)
class ReadNoise(_Perturbation):
    """Gaussian read noise, new draw at every inference (stage "read").

    Attributes:
        sigma: relative std (``mode="relative"``) or std as a fraction of the window
            (``mode="absolute"``); >= 0.
        mode: ``"relative"`` or ``"absolute"``.
    """

    mode: ReadNoiseMode = "relative"
    stage: ClassVar[Stage] = "read"
    _modes: ClassVar[tuple[str, ...]] = READ_NOISE_MODES
