"""Technology table: per-component area, energy and timing constants of one crossbar tile.

The default table (``default_tech.yaml`` next to this module, name ``isaac32``) holds the
ISAAC (Shafiee et al., ISCA 2016, Table I) component figures at 32 nm, with the crossbar cell
size and read pulse of DNN+NeuroSim (Peng et al., TCAD 2020; inference code Param.cpp) and
PUMA (Ankit et al., ASPLOS 2019) as a cross-check; every value is cited there, and the ones
that are modelling estimates say so. A user table is a YAML file with any subset of the keys:
keys left out keep the default values, unknown keys raise :class:`~xbarprune.errors.ConfigError`
naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from xbarprune.config import from_dict, load_yaml
from xbarprune.errors import ConfigError, SpecError, check_range

DEFAULT_TECH_PATH = Path(__file__).with_name("default_tech.yaml")

CrossbarEnergyModel = Literal["per_cell", "device"]


@dataclass(frozen=True)
class TechnologyTable:
    """Area (mm²), energy (pJ or fJ per event) and time (ns) of one tile's components.

    Events are counted per input bit (inputs are applied bit-serially through 1-bit DACs):

    * ``dac_energy_pj``, ``input_register_energy_pj``: per driven row per input bit;
    * ``sample_hold_energy_pj``, ``adc_energy_pj``, ``shift_add_energy_pj``,
      ``output_register_energy_pj``: per converted physical column per input bit;
    * ``cell_read_energy_fj``: per cell of a driven row per input bit (``per_cell`` model);
      the ``device`` model uses ``V_read² · (g_min + g_max)/2 · read_pulse_ns ·
      input_bit_activity`` instead (see :mod:`xbarprune.cost.model`).

    Areas: ``dac_area_mm2`` per tile row, ``sample_hold_area_mm2`` per tile column,
    ``adc_area_mm2`` and ``shift_add_area_mm2`` per ADC, ``register_area_mm2`` per tile, the
    array ``rows · cols · cell_area_f2 · feature_size_nm²``.

    ADC figures are for ``adc_ref_bits``; at ``b`` bits energy and area scale by
    ``scale_per_bit ** (b - adc_ref_bits)`` and the conversion time by ``b / adc_ref_bits``.
    """

    name: str
    feature_size_nm: float
    cell_area_f2: float
    crossbar_energy_model: CrossbarEnergyModel
    cell_read_energy_fj: float
    read_pulse_ns: float
    input_bit_activity: float
    crossbar_read_ns: float
    dac_energy_pj: float
    dac_area_mm2: float
    sample_hold_energy_pj: float
    sample_hold_area_mm2: float
    adc_ref_bits: int
    adc_energy_pj: float
    adc_area_mm2: float
    adc_conversion_ns: float
    adc_energy_scale_per_bit: float
    adc_area_scale_per_bit: float
    columns_per_adc: int
    shift_add_energy_pj: float
    shift_add_area_mm2: float
    input_register_energy_pj: float
    output_register_energy_pj: float
    register_area_mm2: float
    pipelined_read_adc: bool

    def __post_init__(self) -> None:
        if self.crossbar_energy_model not in ("per_cell", "device"):
            raise SpecError(
                f"TechnologyTable.crossbar_energy_model = {self.crossbar_energy_model!r}; "
                "allowed: 'per_cell', 'device'"
            )
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("adc_ref_bits", "columns_per_adc"):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise SpecError(f"TechnologyTable.{f.name} = {v!r}; allowed: an integer >= 1")
            elif f.name == "pipelined_read_adc":
                if not isinstance(v, bool):
                    raise SpecError(f"TechnologyTable.{f.name} = {v!r}; allowed: true or false")
            elif f.name == "input_bit_activity":
                check_range(f"TechnologyTable.{f.name}", v, low=0.0, high=1.0, low_open=True)
            elif f.name not in ("name", "crossbar_energy_model"):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise SpecError(f"TechnologyTable.{f.name} = {v!r}; allowed: a number > 0")
                check_range(f"TechnologyTable.{f.name}", float(v), low=0.0, low_open=True)

    # ------------------------------------------------------------------ loading
    @classmethod
    def default(cls) -> TechnologyTable:
        """The shipped table (``default_tech.yaml``, ISAAC at 32 nm)."""
        return _default_table()

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any] | None, *, base: TechnologyTable | None = None
    ) -> TechnologyTable:
        """Table from a plain mapping; keys left out take ``base``'s values (default table).

        Unknown keys and bad values raise :class:`ConfigError` naming the key.
        """
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"technology table: expected a mapping of keys to values, got {type(data).__name__}"
            )
        start = dataclasses.asdict(base if base is not None else cls.default())
        known = set(start)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) in section 'tech': {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(known))}"
            )
        return from_dict(cls, {**start, **data}, "tech")

    @classmethod
    def from_yaml(cls, path: str | Path, *, base: TechnologyTable | None = None) -> TechnologyTable:
        """Table from a YAML file (``yaml.safe_load``); missing keys take ``base``'s values."""
        return cls.from_mapping(load_yaml(path), base=base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ derived laws
    def adc_energy_at(self, bits: int) -> float:
        """Energy per conversion (pJ) of a ``bits``-bit ADC."""
        return self.adc_energy_pj * self.adc_energy_scale_per_bit ** (bits - self.adc_ref_bits)

    def adc_area_at(self, bits: int) -> float:
        """Area (mm²) of one ``bits``-bit ADC."""
        return self.adc_area_mm2 * self.adc_area_scale_per_bit ** (bits - self.adc_ref_bits)

    def adc_time_at(self, bits: int) -> float:
        """Time (ns) of one ``bits``-bit conversion (SAR: linear in bits)."""
        return self.adc_conversion_ns * bits / self.adc_ref_bits

    @property
    def cell_area_mm2(self) -> float:
        """Area of one memristor cell (mm²): cell_area_f2 · F²."""
        f_mm = self.feature_size_nm * 1e-6
        return self.cell_area_f2 * f_mm * f_mm


@lru_cache(maxsize=1)
def _default_table() -> TechnologyTable:
    data = load_yaml(DEFAULT_TECH_PATH)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{DEFAULT_TECH_PATH} does not hold a mapping")
    return from_dict(TechnologyTable, data, "tech")


def load_tech(source: TechnologyTable | str | Path | Mapping[str, Any] | None) -> TechnologyTable:
    """Resolve a table given as a table, a YAML path, a mapping, or None (default)."""
    if source is None:
        return TechnologyTable.default()
    if isinstance(source, TechnologyTable):
        return source
    if isinstance(source, str | Path):
        return TechnologyTable.from_yaml(source)
    if isinstance(source, Mapping):
        return TechnologyTable.from_mapping(source)
    raise ConfigError(
        f"technology table: expected a TechnologyTable, a YAML path or a mapping, got "
        f"{type(source).__name__}"
    )
