"""The experiment configuration (one YAML file; unknown keys are rejected with their path).

Sections: ``model``, ``data``, ``train``, ``method``, ``finetune``, ``crossbar``, ``device``,
``nonideal`` (a preset name or a full mapping), ``evaluate``, ``cost``, ``runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from xbarprune.analog.batchnorm import BNCalibrationConfig
from xbarprune.config import from_dict, load_yaml, to_dict
from xbarprune.errors import ConfigError, SpecError, check_range
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel, preset
from xbarprune.hardware.presets import resolve_hardware
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.training.loop import TrainConfig
from xbarprune.units import parse_time


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet5"
    width: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist-embedded"
    root: str | None = None
    val_size: float = 0.1
    train_subset: int | None = None
    test_subset: int | None = None
    pad_to: int | None = None
    download: bool = False
    batch_size_eval: int = 1000

    def __post_init__(self) -> None:
        # a fraction of the training split in [0, 1), or a count of images (an integer >= 1)
        check_range("data.val_size", self.val_size, low=0.0)
        if self.val_size >= 1 and float(self.val_size) != int(self.val_size):
            raise SpecError(
                f"data.val_size = {self.val_size!r}; allowed: a fraction in [0, 1) or a "
                "whole number of images"
            )

    @property
    def val(self) -> float | int:
        return int(self.val_size) if self.val_size >= 1 else self.val_size


@dataclass(frozen=True)
class MethodConfig:
    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate:`` section. ``bn_calibration`` (off by default) re-calibrates the digital
    BatchNorm layers on every programmed chip before its non-ideal evaluation
    (:mod:`xbarprune.analog.batchnorm`; Bhattacharjee et al., GLSVLSI 2023)."""

    times: tuple[str | float, ...] = ("1s", "1d", "1y")
    trials: int = 10
    seed: int = 0
    dense: bool = True
    bn_calibration: BNCalibrationConfig | None = None

    def __post_init__(self) -> None:
        check_range("evaluate.trials", self.trials, low=1)
        for t in self.times:
            parse_time(t)

    @property
    def times_s(self) -> list[float]:
        return [parse_time(t) for t in self.times]


@dataclass(frozen=True)
class CostConfig:
    tech: str | None = None
    input_bits: int = 8
    adc_bits: int = 8


@dataclass(frozen=True)
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1))
    crossbar: CrossbarSpec = field(default_factory=CrossbarSpec)
    device: DeviceSpec = field(default_factory=DeviceSpec)
    nonideal: str | NonIdealityConfig = "ideal"
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def nonideal_config(self) -> NonIdealityConfig:
        if isinstance(self.nonideal, str):
            return preset(self.nonideal)
        return self.nonideal

    def nonideal_model(self, override: str | NonIdealityConfig | None = None) -> NonIdealityModel:
        cfg = self.nonideal if override is None else override
        if isinstance(cfg, str):
            cfg = preset(cfg)
        return NonIdealityModel.from_config(cfg)

    def to_dict(self) -> dict:
        return to_dict(self)

    def with_overrides(self, **kw) -> ExperimentConfig:
        return replace(self, **kw)


def load_config(source: str | Path | dict) -> ExperimentConfig:
    """Load and validate an experiment config from a YAML path or a mapping."""
    data = load_yaml(source) if not isinstance(source, dict) else source
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level of a config must be a mapping")
    if isinstance(data.get("nonideal"), dict) and "from_aihwkit" in data["nonideal"]:
        from xbarprune.interop.aihwkit import resolve_from_aihwkit  # issue #19

        base = None if isinstance(source, dict) else Path(source).parent
        data = {**data, "nonideal": resolve_from_aihwkit(data["nonideal"], base)}
    return from_dict(ExperimentConfig, resolve_hardware(data))


def apply_overrides(data: dict, sets: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars)."""
    import copy

    import yaml

    out = copy.deepcopy(data)
    for s in sets:
        if "=" not in s:
            raise ConfigError(f"--set expects key=value, got {s!r}")
        key, val = s.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(val)
    return out
