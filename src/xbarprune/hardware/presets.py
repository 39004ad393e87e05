"""Named hardware: a crossbar and a device from one paper, selectable in any config.

A config may say ``hardware: ma2020`` instead of spelling out ``crossbar:`` and ``device:``;
keys given explicitly in those sections override the preset's (:func:`resolve_hardware`).

* ``ma2020``: Ma et al. ASP-DAC 2020 — passive 1R cells, R_on = 1 MOhm, R_off = 10 MOhm,
  4-bit cells (16 levels), 128 x 64 crossbars, an 8-bit weight as two 4-bit cells, positive
  and negative weights on separate arrays (our differential encoding counts both in one tile).
* ``ma2020-lenet``: the same with the 32 x 32 crossbars the companion paper (Yuan et al.
  ISLPED 2019) uses for LeNet-5.
* ``liang2018``: Liang et al. 2018 run SemiMap on a chip whose "crossbars" are 256 x 256
  SRAM arrays with multipliers (Sec. IV-A, ref. [29]): one signed weight per cell, so offset
  encoding with one cell per weight; the device is an ideal multi-level stand-in (256 levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xbarprune.config import to_dict
from xbarprune.errors import ConfigError
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec


@dataclass(frozen=True)
class HardwarePreset:
    crossbar: CrossbarSpec
    device: DeviceSpec
    source: str


HARDWARE_PRESETS: dict[str, HardwarePreset] = {
    "ma2020": HardwarePreset(
        CrossbarSpec(rows=128, cols=64, cells_per_weight=2, encoding="differential"),
        DeviceSpec.from_resistance(r_on=1e6, r_off=1e7, levels=16),
        "Ma et al. ASP-DAC 2020, Sec. 4",
    ),
    "ma2020-lenet": HardwarePreset(
        CrossbarSpec(rows=32, cols=32, cells_per_weight=2, encoding="differential"),
        DeviceSpec.from_resistance(r_on=1e6, r_off=1e7, levels=16),
        "Yuan et al. ISLPED 2019, Table I (LeNet-5 on 32x32)",
    ),
    "liang2018": HardwarePreset(
        CrossbarSpec(rows=256, cols=256, cells_per_weight=1, encoding="offset"),
        DeviceSpec(levels=256),
        "Liang et al. IEEE Access 2018, Sec. IV-A (SemiMap chip, 256x256 arrays)",
    ),
}


def hardware_preset(name: str) -> HardwarePreset:
    try:
        return HARDWARE_PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown hardware preset {name!r}; known: {', '.join(sorted(HARDWARE_PRESETS))}"
        ) from None


def resolve_hardware(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``hardware: <name>`` key expanded into ``crossbar`` and ``device``.

    Keys already in ``data["crossbar"]`` / ``data["device"]`` win over the preset's.
    """
    if "hardware" not in data:
        return data
    out = dict(data)
    hw = hardware_preset(out.pop("hardware"))
    for key, spec in (("crossbar", hw.crossbar), ("device", hw.device)):
        given = out.get(key) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"'{key}' must be a mapping when 'hardware' is given")
        out[key] = {**to_dict(spec), **given}
    return out
