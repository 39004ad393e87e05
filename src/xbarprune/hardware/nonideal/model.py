"""Configuration of the non-idealities and their composition into a :class:`NonIdealityModel`.

A :class:`NonIdealityConfig` is a plain frozen dataclass tree (one optional section per effect,
``None`` = off) that loads from YAML through ``xbarprune.config.from_dict``; a bad value raises
:class:`~xbarprune.errors.SpecError` naming the field and its allowed range. Example::

    nonideal:
      quantization: {levels: 8}
      drift: {nu_mean: 0.1, nu_std: 0.02, t0: 1.0}
      faults: {sa0: 0.05, sa1: 0.01}
      adc_bits: 8

:meth:`NonIdealityModel.from_config` turns it into the ordered effects:

* stage ``program``: quantisation -> aging -> programming variation -> stuck-at faults;
* stage ``time``: statistical PCM (programming noise, drift, accumulated read noise) -> drift
  -> read disturb;
* stage ``circuit``: IR drop (effective conductances);
* stage ``read``: read noise (fresh every inference);

plus the converter settings (DAC / ADC bits, ADC full scale, drift compensation) that the
analog layer applies. Effects whose settings make them a no-op (zero rates, zero sigma, zero
resistances) are left out, so :attr:`NonIdealityModel.is_ideal` is exact.

Named presets (:data:`PRESETS`, :func:`preset`): ``ideal``, ``prunix``, ``reram``,
``reram_faulty``, ``reram_read_disturb``, ``pcm``, ``aihwkit-default``, ``ir_drop``,
``sparse_nonideal`` (see :func:`preset` for their sources).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any

from torch import Tensor

from xbarprune.errors import SpecError, check_range
from xbarprune.hardware.nonideal._checks import check_choice, check_int, check_positive
from xbarprune.hardware.nonideal.aging import Aging
from xbarprune.hardware.nonideal.base import (
    STAGE_ORDER,
    ConductanceEffect,
    EffectContext,
)
from xbarprune.hardware.nonideal.compensation import (
    ColumnGainCalibration,
    GainCorrection,
    GlobalDriftCompensation,
    RowColumnCalibration,
)
from xbarprune.hardware.nonideal.converters import ADC, DAC
from xbarprune.hardware.nonideal.drift import Drift
from xbarprune.hardware.nonideal.faults import StuckAtFaults
from xbarprune.hardware.nonideal.io import IOConfig
from xbarprune.hardware.nonideal.ir_drop import IRDrop
from xbarprune.hardware.nonideal.pcm import PCMStatistical
from xbarprune.hardware.nonideal.quantization import Quantization
from xbarprune.hardware.nonideal.read_disturb import ReadDisturb
from xbarprune.hardware.nonideal.read_noise import ReadNoise
from xbarprune.hardware.nonideal.variation import ProgrammingVariation

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class NonIdealityConfig:
    """Every non-ideality of a simulation; each section ``None`` = off.

    Attributes:
        quantization, aging, variation, faults: "program" stage effects (in that order).
        pcm, drift, read_disturb: "time" stage effects.
        ir_drop: "circuit" stage.
        read_noise: "read" stage (every inference).
        dac_bits: input DAC resolution (None = ideal inputs).
        adc_bits: per-tile column ADC resolution (None = ideal read-out).
        adc_full_scale: fixed ADC full scale in the analog layer's units, or None to let the
            analog layer calibrate it.
        drift_compensation: ``true`` lets the analog layer rescale outputs by the measured
            global drift (aihwkit's global drift compensation,
            :class:`~xbarprune.hardware.nonideal.compensation.GlobalDriftCompensation`); or,
            from Python, any :class:`~.compensation.GainCorrection` (fitted against the
            weights read right after programming). :attr:`drift_compensator` is the object.
        column_calibration: ``true`` lets the analog layer fit one digital gain per output
            column (:class:`~.compensation.ColumnGainCalibration`; or, from Python, any
            :class:`~.compensation.GainCorrection`, fitted against the intended weights;
            :attr:`calibrator` is the object) after
            programming (least squares of the read-back weights against the intended ones;
            see :class:`~xbarprune.analog.layers.AnalogLayer`). Undoes the systematic,
            column-wise attenuation of wire and driver/sense resistance, not random effects.
        row_calibration: with ``column_calibration``, also fit one digital input gain per
            tile row (applied to the row's input before its DAC), jointly with the column
            gains by alternating least squares. Undoes the row-wise attenuation through the
            driver resistance, which depends on each tile row's total conductance and which
            a column gain cannot undo (ours; see docs/methods/sparse_nonideal.md;
            :class:`~.compensation.RowColumnCalibration`).
        io: peripheral I/O of every analog MVM, aihwkit's ``IOParameters`` (noise and bound
            management, DAC, output noise, ADC with output bound; see
            :mod:`xbarprune.hardware.nonideal.io`), or None. It replaces ``dac_bits`` /
            ``adc_bits`` (``io.per_tile`` selects the per-tile path); with
            ``drift_compensation`` the gain is read out through it, as aihwkit does.
    """

    quantization: Quantization | None = None
    aging: Aging | None = None
    variation: ProgrammingVariation | None = None
    faults: StuckAtFaults | None = None
    pcm: PCMStatistical | None = None
    drift: Drift | None = None
    read_disturb: ReadDisturb | None = None
    ir_drop: IRDrop | None = None
    read_noise: ReadNoise | None = None
    dac_bits: int | None = None
    adc_bits: int | None = None
    adc_full_scale: float | None = None
    drift_compensation: bool | GainCorrection = False
    column_calibration: bool | GainCorrection = False
    row_calibration: bool = False
    io: IOConfig | None = None

    def __post_init__(self) -> None:
        if self.dac_bits is not None:
            check_int("NonIdealityConfig.dac_bits", self.dac_bits, low=1, high=32)
        if self.adc_bits is not None:
            check_int("NonIdealityConfig.adc_bits", self.adc_bits, low=1, high=32)
        if self.adc_full_scale is not None:
            check_positive("NonIdealityConfig.adc_full_scale", self.adc_full_scale)
        for k in ("drift_compensation", "column_calibration", "row_calibration"):
            v = getattr(self, k)
            scheme = k != "row_calibration" and isinstance(v, GainCorrection)
            if not isinstance(v, bool) and not scheme:
                raise SpecError(f"NonIdealityConfig.{k} = {v!r}; allowed: true, false")
        if self.row_calibration and self.column_calibration is not True:
            raise SpecError(
                "NonIdealityConfig.row_calibration needs column_calibration: true (the row "
                "gains are fitted jointly with the column gains)"
            )
        if self.io is not None:
            if not isinstance(self.io, IOConfig):
                raise SpecError(f"NonIdealityConfig.io = {self.io!r}; allowed: an IOConfig")
            for k in ("dac_bits", "adc_bits", "adc_full_scale"):
                if getattr(self, k) is not None:
                    raise SpecError(
                        f"NonIdealityConfig.{k} = {getattr(self, k)!r} with io set; allowed: "
                        "null (io.inp_res / io.out_res / io.out_bound are the converters; "
                        "io.per_tile: true selects the per-tile path)"
                    )
            if isinstance(self.calibrator, RowColumnCalibration):
                raise SpecError(
                    "NonIdealityConfig.row_calibration is not supported with io (row gains "
                    "are folded into the cells, which would change what the periphery sees)"
                )

    @property
    def drift_compensator(self) -> GainCorrection | None:
        """The drift compensation scheme: ``drift_compensation: true`` is
        :class:`GlobalDriftCompensation`, false is None."""
        dc = self.drift_compensation
        if dc is True:
            return GlobalDriftCompensation()
        return None if dc is False else dc

    @property
    def calibrator(self) -> GainCorrection | None:
        """The calibration scheme: ``column_calibration: true`` is
        :class:`ColumnGainCalibration`, with ``row_calibration: true`` too
        :class:`RowColumnCalibration`; false is None."""
        cc = self.column_calibration
        if cc is True:
            return RowColumnCalibration() if self.row_calibration else ColumnGainCalibration()
        return None if cc is False else cc


#: sections of NonIdealityConfig in the order their effects run.
EFFECT_SECTIONS: tuple[str, ...] = (
    "quantization",
    "aging",
    "variation",
    "faults",
    "pcm",
    "drift",
    "read_disturb",
    "ir_drop",
    "read_noise",
)

# --------------------------------------------------------------------------- presets

#: named configurations; see :func:`preset`.
PRESETS: dict[str, NonIdealityConfig] = {
    "ideal": NonIdealityConfig(),
    "prunix": NonIdealityConfig(
        quantization=Quantization(levels=8),
        aging=Aging(cycles=1e6, alpha=0.2, beta=0.2, n_ref=1e6),
        faults=StuckAtFaults(sa0=0.05, sa1=0.01),
        drift=Drift(nu_mean=0.1, nu_std=0.02, t0=1.0),
        drift_compensation=True,
    ),
    "reram": NonIdealityConfig(
        quantization=Quantization(levels=16),
        variation=ProgrammingVariation(sigma=0.05, mode="relative"),
        faults=StuckAtFaults(sa0=0.00175, sa1=0.00904),
        read_noise=ReadNoise(sigma=0.02, mode="relative"),
        dac_bits=8,
        adc_bits=8,
    ),
    "reram_faulty": NonIdealityConfig(
        quantization=Quantization(levels=16),
        variation=ProgrammingVariation(sigma=0.05, mode="relative"),
        faults=StuckAtFaults(sa0=0.0175, sa1=0.0904),
        read_noise=ReadNoise(sigma=0.02, mode="relative"),
        dac_bits=8,
        adc_bits=8,
    ),
    "pcm": NonIdealityConfig(pcm=PCMStatistical(), drift_compensation=True),
    "reram_read_disturb": NonIdealityConfig(
        quantization=Quantization(levels=16),
        variation=ProgrammingVariation(sigma=0.05, mode="relative"),
        faults=StuckAtFaults(sa0=0.00175, sa1=0.00904),
        read_disturb=ReadDisturb(
            v_read=0.2,
            t_read=1e-8,
            inferences_per_second=1000.0,
            reads_per_inference=8.0,
            cycles=1e4,
        ),
        read_noise=ReadNoise(sigma=0.02, mode="relative"),
        dac_bits=8,
        adc_bits=8,
    ),
    "ir_drop": NonIdealityConfig(
        quantization=Quantization(levels=16),
        ir_drop=IRDrop(r_row=5.0, r_col=10.0, r_source=1000.0, r_sink=1000.0),
    ),
    "aihwkit-default": NonIdealityConfig(
        pcm=PCMStatistical(), drift_compensation=True, io=IOConfig()
    ),
    "sparse_nonideal": NonIdealityConfig(
        quantization=Quantization(levels=16),
        variation=ProgrammingVariation(sigma=0.1, mode="relative"),
        ir_drop=IRDrop(r_row=5.0, r_col=10.0, r_source=1000.0, r_sink=1000.0, tol=1e-9),
        adc_bits=8,
        column_calibration=True,
    ),
}


def preset(name: str) -> NonIdealityConfig:
    """The named :class:`NonIdealityConfig`.

    * ``ideal``: nothing.
    * ``prunix``: the PRUNIX reconstruction (shared/papers/prunix.md section 4.1): 8 levels,
      aging with alpha = beta = 0.2 (cycles = n_ref), stuck-at faults SA0 (HRS) 5 % and
      SA1 (LRS) 1 % per cell, drift nu ~ N(0.1, 0.02) with t0 = 1 s, and global drift
      compensation (without it the common drift factor, 0.32 after a day, shrinks every
      weight while the digital biases stay, and a dense LeNet-5 falls to chance: measured
      87.5 % -> 11 % on Fashion-MNIST at 1 day; with it, 76 / 70 / 64 % at 1 s / 1 d / 1 y).
    * ``reram``: a generic multilevel ReRAM: 16 levels (4-bit cells), 5 % relative
      programming variation, 2 % relative read noise, 8-bit DAC and ADC, stuck-at faults at
      one tenth of Chen et al. 2015's pre-repair rates (SA0 0.175 %, SA1 0.904 %: their
      SA1 : SA0 ratio at a rate a repaired array plausibly shows; the full rates dominate
      every other effect).
    * ``reram_faulty``: ``reram`` with the full Chen et al. rates (SA0 1.75 %, SA1 9.04 %).
    * ``pcm``: aihwkit's statistical PCM model with its default coefficients, global drift
      compensation on, no converters (isolates the device model).
    * ``reram_read_disturb``: ``reram`` plus read disturb (:mod:`.read_disturb`, Jiang et
      al. 2021): 0.2 V, 10 ns read pulses, 8 per inference (8-bit bit-serial inputs), 1000
      inferences per second, cells cycled 1e4 times before (onset of the decay after 15 ms
      of read stress, i.e. 190 s of use; conductances x0.907 after a day, x0.826 after a
      year). No drift compensation, so the decay shrinks every weight against the biases.
    * ``aihwkit-default``: what aihwkit 1.1 users get from ``TorchInferenceRPUConfig()``:
      the ``pcm`` device model, global drift compensation read out through the periphery,
      and the default forward ``IOParameters`` (:class:`IOConfig` defaults: 7-bit DAC
      ``inp_res`` 1/126 over ``inp_bound`` 1, abs-max noise management, output noise 0.06,
      9-bit ADC ``out_res`` 1/510 over ``out_bound`` 12, iterative bound management,
      unscaled weights ``weight_scaling_omega`` 0, tiles of ``max_input_size`` 512 inputs).
    * ``ir_drop``: the Bhattacharjee et al. / RxNN parasitics (driver and sense 1 kOhm, row
      segment 5 ohm, column segment 10 ohm) with 4-bit (16-level) cells.
    * ``sparse_nonideal``: ``ir_drop`` plus 10 % relative programming variation (RxNN's
      sigma/mu), 8-bit per-tile column ADCs and per-column gain calibration; exact ``direct``
      solve (its ``tol`` 1e-9 V applies if ``method: iterative`` is chosen) (the study of
      issue #8, docs/methods/sparse_nonideal.md; use it with the RRAM cell
      of :data:`xbarprune.analog.parasitics.RRAM_DATE22`: R_ON 50 kOhm, ON/OFF 10, 16 levels).
      Without the calibration 1 kOhm drivers and sense amplifiers against 50 kOhm cells
      attenuate every column by 20-35 % and a dense VGG-11 falls to chance (measured 87.7 % ->
      15 % on Fashion-MNIST at 32x32); with it, 83 %.

    Unknown names raise :class:`SpecError` listing the known ones.
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise SpecError(
            f"unknown non-ideality preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class NonIdealityModel:
    """Ordered effects plus converter settings; the analog layer's single entry point.

    Attributes:
        effects: the effects; within one stage they run in the given order.
        dac: input DAC or None (ideal inputs).
        adc: column ADC or None (ideal read-out).
        drift_compensation: ask the analog layer for global drift compensation.
        column_calibration: ask the analog layer for per-column gain calibration.
        config: the config it was built from (when built directly, one holding just the
            converter settings is made up, so ``model.config.dac_bits`` etc. always work).
    """

    effects: tuple[ConductanceEffect, ...] = ()
    dac: DAC | None = None
    adc: ADC | None = None
    drift_compensation: bool = False
    column_calibration: bool = False
    config: NonIdealityConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "effects", tuple(self.effects))
        if self.config is None:
            object.__setattr__(
                self,
                "config",
                NonIdealityConfig(
                    dac_bits=self.dac_bits,
                    adc_bits=self.adc_bits,
                    adc_full_scale=self.adc_full_scale,
                    drift_compensation=self.drift_compensation,
                    column_calibration=self.column_calibration,
                ),
            )
        for e in self.effects:
            if not isinstance(e, ConductanceEffect):
                raise SpecError(f"NonIdealityModel.effects: {e!r} is not a ConductanceEffect")
            if e.stage not in STAGE_ORDER:
                raise SpecError(f"{type(e).__name__}.stage = {e.stage!r}; allowed: {STAGE_ORDER}")

    @classmethod
    def from_config(
        cls, cfg: NonIdealityConfig | str | Mapping[str, Any] | None
    ) -> NonIdealityModel:
        """Build from a config, a preset name, a plain mapping (parsed YAML) or None (ideal)."""
        if cfg is None:
            cfg = NonIdealityConfig()
        elif isinstance(cfg, str):
            cfg = preset(cfg)
        elif isinstance(cfg, Mapping):
            from xbarprune.config import from_dict

            cfg = from_dict(NonIdealityConfig, cfg, "nonideal")
        if not isinstance(cfg, NonIdealityConfig):
            raise SpecError(f"expected a NonIdealityConfig, got {type(cfg).__name__}")
        effects = []
        for name in EFFECT_SECTIONS:
            effect = getattr(cfg, name)
            if effect is not None and not effect.is_ideal:
                effects.append(effect)
        return cls(
            effects=tuple(effects),
            dac=DAC(cfg.dac_bits) if cfg.dac_bits is not None else None,
            adc=ADC(cfg.adc_bits, cfg.adc_full_scale) if cfg.adc_bits is not None else None,
            drift_compensation=cfg.drift_compensator is not None,
            column_calibration=cfg.calibrator is not None,
            config=cfg,
        )

    # ---- queries
    def stage(self, name: str) -> list[ConductanceEffect]:
        """The effects of stage ``name`` in run order."""
        check_choice("stage", name, STAGE_ORDER)
        return [e for e in self.effects if e.stage == name]

    @property
    def is_ideal(self) -> bool:
        """No effect, no converter and no peripheral I/O model."""
        return not self.effects and self.dac is None and self.adc is None and self.io is None

    @property
    def io(self) -> IOConfig | None:
        """The peripheral I/O model (``config.io``), or None."""
        return None if self.config is None else self.config.io

    @property
    def has_read_stage(self) -> bool:
        """Whether anything must be drawn anew at every inference."""
        return any(e.stage == "read" for e in self.effects)

    @property
    def dac_bits(self) -> int | None:
        return None if self.dac is None else self.dac.bits

    @property
    def adc_bits(self) -> int | None:
        return None if self.adc is None else self.adc.bits

    @property
    def adc_full_scale(self) -> float | None:
        return None if self.adc is None else self.adc.full_scale

    # ---- application
    def apply_stage(self, name: str, g: Tensor, ctx: EffectContext) -> Tensor:
        """Run the effects of one stage on ``g`` (T, rows, cols)."""
        for effect in self.stage(name):
            g = effect.apply(g, ctx)
        return g

    def program(self, g: Tensor, ctx: EffectContext) -> Tensor:
        """Stages "program" then "time" (once per Monte Carlo trial, at ``ctx.time_s``)."""
        check_range("EffectContext.time_s", float(ctx.time_s), low=0.0)
        return self.apply_stage("time", self.apply_stage("program", g, ctx), ctx)

    def circuit(self, g: Tensor, ctx: EffectContext) -> Tensor:
        """Stage "circuit" (input independent: IR drop -> effective conductances)."""
        return self.apply_stage("circuit", g, ctx)

    def read(self, g: Tensor, ctx: EffectContext) -> Tensor:
        """Stage "read" (call at every inference)."""
        return self.apply_stage("read", g, ctx)

    def apply(self, g: Tensor, ctx: EffectContext) -> Tensor:
        """All four stages in order (one trial, one inference)."""
        return self.read(self.circuit(self.program(g, ctx), ctx), ctx)

    def describe(self) -> dict[str, Any]:
        """Plain-dict summary for reports (JSON-serialisable)."""
        return {
            "ideal": self.is_ideal,
            "effects": [
                {"name": type(e).__name__, "stage": e.stage, "params": _params(e)}
                for e in self.effects
            ],
            "dac_bits": self.dac_bits,
            "adc_bits": self.adc_bits,
            "adc_full_scale": self.adc_full_scale,
            "drift_compensation": self.drift_compensation,
            "column_calibration": self.column_calibration,
            **({"io": asdict(self.io)} if self.io is not None else {}),
        }


def _params(effect: ConductanceEffect) -> dict[str, Any]:
    if is_dataclass(effect):
        out = asdict(effect)
        return {f.name: _plain(out[f.name]) for f in fields(effect)}
    return {}


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v
