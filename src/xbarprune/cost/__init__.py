"""Crossbars, cells, ADCs, area, energy and latency from a layout and a technology table.

Sources of the default constants (all cited in ``default_tech.yaml``): ISAAC (Shafiee et al.,
ISCA 2016, Table I), PUMA (Ankit et al., ASPLOS 2019, Table 3) and DNN+NeuroSim (Peng et al.,
TCAD 2020; inference code Param.cpp). The laws are documented in :mod:`xbarprune.cost.model`.
"""

from xbarprune.cost.activity import count_mvms
from xbarprune.cost.model import (
    COMPONENTS,
    PERIPHERAL_COMPONENTS,
    Cost,
    CostReport,
    LayerCost,
    energy_with_peripheral_share,
    estimate_cost,
    estimate_model_cost,
)
from xbarprune.cost.tech import DEFAULT_TECH_PATH, TechnologyTable, load_tech

__all__ = [
    "COMPONENTS",
    "DEFAULT_TECH_PATH",
    "PERIPHERAL_COMPONENTS",
    "Cost",
    "CostReport",
    "LayerCost",
    "TechnologyTable",
    "count_mvms",
    "energy_with_peripheral_share",
    "estimate_cost",
    "estimate_model_cost",
    "load_tech",
]
