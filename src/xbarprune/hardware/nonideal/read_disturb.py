"""Read-disturb drift of ReRAM: the conductance decays with the accumulated read stress.

Law: Jiang, Hsu and Wang, "An Analytical Model of Read-Disturb Failure Time in a Post-Cycling
Resistive Switching Memory", IEEE Trans. Electron Devices 68(12), 2021 (HfO2 1T1R cells
measured at several read voltages and after several set/reset cycle counts). The paper is not
openly readable; the constants below are its fit as transcribed by the open simulator
rpelke/analog-cim-sim (R. Pelke, 2025, ``cpp/src/xbar/read_disturb.cpp``, which cites the
paper and marks ``f`` as read off its figures). We did not check them against the paper.
A cell read ``n`` times with pulses of width ``t_read`` has seen the stress time
``t_s = n t_read``; its conductance is::

    G(t_s) = G_0                          t_s <  tau
    G(t_s) = G_0 (t_s / tau) ** (-p)      t_s >= tau
    p      = c1 exp(alpha |V_read| / (k_B T / q))                 (voltage acceleration)
    tau    = t0 (f (1 - k N_c ** m)) ** (1 / p)                    (onset of the decay)

with ``N_c`` the set/reset cycles the cell went through before (cycling thins the filament
and brings the onset forward) and the fitted constants ``t0 = 1.55e-8 s``, ``f = 1.43339``,
``c1 = 0.0068``, ``alpha = 0.11``, ``k = 0.003``, ``m = 0.41`` at ``T = 300 K``. The model is
defined for ``k N_c ** m < 1`` (``N_c`` < about 1.4e6). At 0.2 V (``p`` = 0.0159) a fresh cell
starts to decay after 100 s of read stress, one cycled 1e4 times after 15 ms.

The number of reads follows from the evaluation time (``EffectContext.time_s``, seconds of
deployment after programming): ``n = time_s * inferences_per_second * reads_per_inference``
(``reads_per_inference``: read pulses per weight per inference, e.g. 8 for 8-bit bit-serial
inputs; every cell of a driven row is stressed). All cells see the same number of reads, so
with one ``N_c`` the decay is one factor for the whole array: a differential pair's weight
shrinks with it while the digital biases do not, and global drift compensation undoes it.

Why this law: it is, among the read-disturb studies we found, the one with a closed form and
published constants that ties the decay to both the read voltage and the number of reads
(Yao et al., Nature 2020, Extended Data Fig. 7, measure 1e6 reads at 0.2 V on multilevel
RRAM without a law; Shim et al., IRPS 2020 / IEEE TED 2020, model multilevel read disturb by
filament growth, but we could not obtain their constants; the PRUNIX group's AIDX
sub-threshold drift model is not public, see shared/papers/prunix.md). The PRUNIX notes do
not give PRUNIX's own law, so it is its own effect and preset, not part of ``prunix``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal._checks import check_nonneg, check_positive
from xbarprune.hardware.nonideal.base import ConductanceEffect, EffectContext, Stage

K_B = 1.380649e-23  # J/K
Q_E = 1.602176634e-19  # C


def read_disturb_exponent(v_read: float, c1: float, alpha: float, temperature: float) -> float:
    """``p = c1 exp(alpha |V_read| q / (k_B T))`` (Jiang et al. 2021)."""
    return c1 * math.exp(alpha * abs(v_read) / (K_B * temperature / Q_E))


def read_disturb_onset(p: float, cycles: float, t0: float, f: float, k: float, m: float) -> float:
    """Onset stress time ``tau = t0 (f (1 - k N_c**m)) ** (1/p)`` in seconds."""
    base = 1.0 - k * cycles**m
    if base <= 0:
        raise SpecError(
            f"ReadDisturb.cycles = {cycles!r} is beyond the model (k * cycles**m = "
            f"{k * cycles**m:.3g} >= 1); allowed: cycles < {(1 / k) ** (1 / m):.3g}"
        )
    return t0 * math.exp((math.log(f) + math.log(base)) / p)


def read_disturb_factor(stress_s: float, tau: float, p: float) -> float:
    """``1`` for ``stress_s < tau``, else ``(stress_s / tau) ** (-p)``."""
    return 1.0 if stress_s < tau else (stress_s / tau) ** (-p)


@dataclass(frozen=True)
class ReadDisturb(ConductanceEffect):
    """Read-disturb decay of every cell after ``ctx.time_s`` seconds of use (stage "time").

    Attributes:
        v_read: read voltage in volts (its magnitude counts).
        t_read: width of one read pulse in seconds (> 0).
        inferences_per_second: inference rate of the deployed array (>= 0).
        reads_per_inference: read pulses per cell per inference (>= 0).
        cycles: set/reset cycles before programming, ``N_c`` (>= 0).
        t0, f, c1, alpha, k, m, temperature: the law's constants (module docstring).
    """

    v_read: float = 0.2
    t_read: float = 1e-8
    inferences_per_second: float = 1.0
    reads_per_inference: float = 1.0
    cycles: float = 0.0
    t0: float = 1.55e-8
    f: float = 1.43339
    c1: float = 0.0068
    alpha: float = 0.11
    k: float = 0.003
    m: float = 0.41
    temperature: float = 300.0
    stage: ClassVar[Stage] = "time"

    def __post_init__(self) -> None:
        check_nonneg("ReadDisturb.v_read", abs(self.v_read))
        for name in ("t_read", "t0", "f", "c1", "m", "temperature"):
            check_positive(f"ReadDisturb.{name}", getattr(self, name))
        for name in ("inferences_per_second", "reads_per_inference", "cycles", "alpha", "k"):
            check_nonneg(f"ReadDisturb.{name}", getattr(self, name))
        self.onset()  # cycles within the model's range

    @property
    def is_ideal(self) -> bool:
        return self.inferences_per_second == 0 or self.reads_per_inference == 0

    @property
    def exponent(self) -> float:
        return read_disturb_exponent(self.v_read, self.c1, self.alpha, self.temperature)

    def onset(self) -> float:
        """Onset stress time ``tau`` (s)."""
        return read_disturb_onset(self.exponent, self.cycles, self.t0, self.f, self.k, self.m)

    def reads(self, time_s: float) -> float:
        """Reads of each cell after ``time_s`` seconds of use."""
        return time_s * self.inferences_per_second * self.reads_per_inference

    def factor(self, time_s: float) -> float:
        """Conductance factor after ``time_s`` seconds of use."""
        stress = self.reads(time_s) * self.t_read
        return read_disturb_factor(stress, self.onset(), self.exponent)

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        check_nonneg("EffectContext.time_s", ctx.time_s)
        a = self.factor(float(ctx.time_s))
        return g if a == 1.0 else g * a
