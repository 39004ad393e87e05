"""Device and circuit non-idealities of memristive crossbars (DESIGN.md ``hardware/nonideal/``).

Every effect is a frozen dataclass with ``apply(g, ctx)`` on the physical tile view
(T, rows, cols) in siemens, all randomness from ``ctx.generator`` (see :mod:`.base`). Effects
that model *noise of programming or reading* (variation, read noise, PCM) touch only the cells
in ``ctx.used``; effects that model the *array itself* (quantisation, aging, faults, drift,
IR drop) act on every cell.
"""

from xbarprune.hardware.nonideal.aging import Aging, aged_window, shrink_fraction
from xbarprune.hardware.nonideal.base import (
    STAGE_ORDER,
    ConductanceEffect,
    EffectContext,
    Stage,
    rand,
    randn,
)
from xbarprune.hardware.nonideal.converters import ADC, DAC, levels_per_side, quantize_uniform
from xbarprune.hardware.nonideal.drift import Drift, drift_factor
from xbarprune.hardware.nonideal.faults import StuckAtFaults, fault_map
from xbarprune.hardware.nonideal.io import IOConfig, io_mvm
from xbarprune.hardware.nonideal.ir_drop import IRDrop, effective_conductance, nodal_solve
from xbarprune.hardware.nonideal.model import (
    PRESETS,
    NonIdealityConfig,
    NonIdealityModel,
    preset,
)
from xbarprune.hardware.nonideal.pcm import PCMStatistical
from xbarprune.hardware.nonideal.quantization import Quantization, quantize_levels
from xbarprune.hardware.nonideal.read_disturb import ReadDisturb
from xbarprune.hardware.nonideal.read_noise import ReadNoise
from xbarprune.hardware.nonideal.variation import ProgrammingVariation

__all__ = [
    "ADC",
    "DAC",
    "PRESETS",
    "STAGE_ORDER",
    "Aging",
    "ConductanceEffect",
    "Drift",
    "EffectContext",
    "StuckAtFaults",
    "IOConfig",
    "IRDrop",
    "NonIdealityConfig",
    "NonIdealityModel",
    "PCMStatistical",
    "ProgrammingVariation",
    "Quantization",
    "ReadDisturb",
    "ReadNoise",
    "Stage",
    "aged_window",
    "drift_factor",
    "effective_conductance",
    "fault_map",
    "io_mvm",
    "levels_per_side",
    "nodal_solve",
    "preset",
    "quantize_levels",
    "quantize_uniform",
    "rand",
    "randn",
    "shrink_fraction",
]
