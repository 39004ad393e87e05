"""Technology table: default file, YAML loading, validation, ADC bit laws."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from torch import nn

from xbarprune.cost import DEFAULT_TECH_PATH, TechnologyTable, estimate_cost, load_tech
from xbarprune.errors import ConfigError, SpecError
from xbarprune.hardware import CrossbarSpec
from xbarprune.mapping import map_model


def test_default_table_matches_shipped_yaml_and_isaac():
    t = TechnologyTable.default()
    with DEFAULT_TECH_PATH.open() as fh:
        raw = yaml.safe_load(fh)
    assert set(raw) == {f.name for f in dataclasses.fields(TechnologyTable)}
    assert t.to_dict() == {k: raw[k] for k in t.to_dict()}
    # ISAAC Table I derived constants (per IMA of 8 crossbars, 100 ns cycle)
    assert t.adc_area_mm2 == pytest.approx(0.0096 / 8)
    assert t.adc_energy_pj == pytest.approx(2e-3 / 1.28e9 * 1e12)
    assert t.dac_energy_pj == pytest.approx(4e-3 / 1024 * 100e-9 * 1e12)
    assert t.cell_read_energy_fj == pytest.approx(2.4e-3 / 8 * 100e-9 / 16384 * 1e15)
    assert t.cell_area_mm2 == pytest.approx(4 * (32e-6) ** 2)


def test_adc_bit_laws():
    t = TechnologyTable.default()
    assert t.adc_energy_at(8) == t.adc_energy_pj
    assert t.adc_energy_at(9) == pytest.approx(2 * t.adc_energy_pj)
    assert t.adc_energy_at(5) == pytest.approx(t.adc_energy_pj / 8)
    assert t.adc_area_at(7) == pytest.approx(t.adc_area_mm2 / 2)
    assert t.adc_time_at(4) == pytest.approx(t.adc_conversion_ns / 2)


def test_yaml_partial_override(tmp_path):
    p = tmp_path / "tech.yaml"
    p.write_text("name: mine\nadc_energy_pj: 3.0\ncolumns_per_adc: 8\n")
    t = TechnologyTable.from_yaml(p)
    assert (t.name, t.adc_energy_pj, t.columns_per_adc) == ("mine", 3.0, 8)
    assert t.dac_energy_pj == TechnologyTable.default().dac_energy_pj
    # a path works wherever a table is accepted
    lay = map_model(nn.Linear(128, 64), CrossbarSpec(128, 128))
    r = estimate_cost(lay, {"": 1}, tech=str(p), input_bits=1)
    assert r.tech.name == "mine" and r.dense.adcs == 16
    assert load_tech(None) == TechnologyTable.default()
    assert load_tech({"name": "x"}).name == "x"


def test_yaml_unknown_key_names_it(tmp_path):
    p = tmp_path / "tech.yaml"
    p.write_text("adc_energy_pj: 1.0\nadc_enegry_pj: 2.0\n")
    with pytest.raises(ConfigError, match="adc_enegry_pj"):
        TechnologyTable.from_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        TechnologyTable.from_yaml(tmp_path / "missing.yaml")
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        TechnologyTable.from_yaml(p)


@pytest.mark.parametrize("field", ["adc_energy_pj", "cell_area_f2", "crossbar_read_ns"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_non_positive_values_rejected_naming_the_field(field, value, tmp_path):
    with pytest.raises(SpecError, match=field):
        dataclasses.replace(TechnologyTable.default(), **{field: value})
    p = tmp_path / "tech.yaml"
    p.write_text(f"{field}: {value}\n")
    with pytest.raises(ConfigError, match=field):
        TechnologyTable.from_yaml(p)


def test_other_validation():
    d = TechnologyTable.default()
    with pytest.raises(SpecError, match="columns_per_adc"):
        dataclasses.replace(d, columns_per_adc=0)
    with pytest.raises(SpecError, match="input_bit_activity"):
        dataclasses.replace(d, input_bit_activity=1.5)
    with pytest.raises(SpecError, match="crossbar_energy_model"):
        dataclasses.replace(d, crossbar_energy_model="magic")
    with pytest.raises(ConfigError, match="crossbar_energy_model"):
        TechnologyTable.from_mapping({"crossbar_energy_model": "magic"})
    with pytest.raises(ConfigError, match="adc_energy_pj"):
        TechnologyTable.from_mapping({"adc_energy_pj": "lots"})
