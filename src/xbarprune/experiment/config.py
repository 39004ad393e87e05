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
from xbarprune.errors import ConfigError, SpecError, XbarpruneError, check_range
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel, preset
from xbarprune.hardware.presets import resolve_hardware
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.training.loop import TrainConfig
from xbarprune.units import parse_time

# seeds are kept in [0, 2^32): trial generators are seeded with seed * 1_000_003 + trial
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class ModelConfig:
    """The ``model:`` section. ``digital`` names layers (exact names or ``fnmatch`` patterns)
    that are explicitly left digital: they are not mapped onto crossbars, and the report lists
    them with the other digital layers."""

    name: str = "lenet5"
    width: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    digital: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_range("model.width", self.width, low=0.0, low_open=True)


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
        check_range("data.batch_size_eval", self.batch_size_eval, low=1)
        for key in ("train_subset", "test_subset", "pad_to"):
            v = getattr(self, key)
            if v is not None:
                check_range(f"data.{key}", v, low=1)
        if self.val_size >= 1 and float(self.val_size) != int(self.val_size):
            raise SpecError(
                f"data.val_size = {self.val_size!r}; allowed: a fraction in [0, 1) or a "
                "whole number of images"
            )

    @property
    def val(self) -> float | int:
        return int(self.val_size) if self.val_size >= 1 else self.val_size


@dataclass(frozen=True)
class FollowUpConfig:
    """A method applied after the fine-tune (``method.then``): registered ``name``, ``params``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodConfig:
    """The ``method:`` section: the registered ``name`` and its ``params``; ``then`` lists
    methods applied, in order, to the fine-tuned model with its pruning kept (zeros stay zero,
    the placement is kept), e.g. weight-constrained training after pruning (Bhattacharjee et
    al., DATE 2022: prune, fine-tune, then WCT)."""

    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    then: tuple[FollowUpConfig, ...] = ()


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
        check_range("evaluate.seed", self.seed, low=0, high=MAX_SEED)
        if not self.times:
            raise SpecError("evaluate.times is empty; allowed: one or more times, e.g. [1s, 1y]")
        for t in self.times:
            try:
                parse_time(t)
            except XbarpruneError as exc:
                raise SpecError(f"evaluate.times: {exc}") from exc

    @property
    def times_s(self) -> list[float]:
        return [parse_time(t) for t in self.times]


@dataclass(frozen=True)
class CostConfig:
    tech: str | None = None
    input_bits: int = 8
    adc_bits: int = 8

    def __post_init__(self) -> None:
        check_range("cost.input_bits", self.input_bits, low=1, high=32)
        check_range("cost.adc_bits", self.adc_bits, low=1, high=32)


@dataclass(frozen=True)
class RuntimeConfig:
    """The ``runtime:`` section: where and how to compute; it never changes a result, so no
    stage is recomputed when it changes. ``strict`` makes layers that stay digital an error;
    ``max_tile_memory_gb`` bounds the memory of one layer's tile tensor (a crossbar or layer
    that would need more is refused before training)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None
    strict: bool = False
    max_tile_memory_gb: float = 4.0

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_range("runtime.threads", self.threads, low=1, high=1024)
        check_range("runtime.max_tile_memory_gb", self.max_tile_memory_gb, low=0.0, low_open=True)


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

    def __post_init__(self) -> None:
        check_range("seed", self.seed, low=0, high=MAX_SEED)
        ok = self.name not in ("", ".", "..") and not set(self.name) & set("/\\")
        if not ok or not self.name.isprintable():
            raise SpecError(
                f"name = {self.name!r}; allowed: a plain name (it names the run directory "
                "runs/<name>), without path separators"
            )
        if isinstance(self.nonideal, str):
            preset(self.nonideal)  # an unknown preset name fails here, before any training

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


def load_config(source: str | Path | dict | Any) -> ExperimentConfig:
    """Load and validate an experiment config from a YAML path or a mapping."""
    data = load_yaml(source) if isinstance(source, str | Path) else source
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = source if isinstance(source, str | Path) else "config"
        raise ConfigError(
            f"{where}: the top level of a config must be a mapping of sections (model, data, "
            f"train, ...), got a {type(data).__name__}"
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config keys must be names, got {bad[0]!r}")
    if isinstance(data.get("nonideal"), dict) and "from_aihwkit" in data["nonideal"]:
        from xbarprune.interop.aihwkit import resolve_from_aihwkit  # issue #19

        base = Path(source).parent if isinstance(source, str | Path) else None
        data = {**data, "nonideal": resolve_from_aihwkit(data["nonideal"], base)}
    return from_dict(ExperimentConfig, resolve_hardware(data))


def apply_overrides(data: dict, sets: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars)."""
    import copy

    import yaml

    from xbarprune.config import yaml_problem

    out = copy.deepcopy(data)
    for s in sets:
        if "=" not in s:
            raise ConfigError(f"--set expects key=value, got {s!r}")
        key, val = s.split("=", 1)
        parts = key.split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"--set {key}: a key is dot-separated names, e.g. train.lr")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(val)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {val!r} is not a valid YAML value: "
                              f"{yaml_problem(exc)}") from exc  # fmt: skip
    return out
