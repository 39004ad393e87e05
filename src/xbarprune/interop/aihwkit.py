"""Translation between our non-ideality config and IBM aihwkit's ``InferenceRPUConfig``.

aihwkit (Rasch et al., "A flexible and fast PyTorch toolkit for simulating training and
inference on analog crossbar arrays", AICAS 2021; version 1.1.0) is optional: the translation
itself (:func:`translate_to_aihwkit`, :func:`nonideal_from_aihwkit` on a plain mapping) needs
nothing of it; building its objects (:func:`build_rpu_config`, :func:`to_analog_sequential`) or
reading a live config does.

**Export** (:func:`translate_to_aihwkit`) produces a *spec*: plain data naming the aihwkit
settings (``forward`` I/O parameters, ``mapping``, ``noise_model`` class and arguments,
``drift_compensation``), plus two lists: ``approximate`` (translated, but aihwkit computes it
differently; the reason says how) and ``untranslated`` (no aihwkit counterpart; left out).
Correspondences (ours -> aihwkit):

* ``pcm`` -> ``PCMLikeNoiseModel`` with the same ``prog_coeff`` (uS at 25 uS, so
  ``prog_coeff_g_max_reference = 25``), ``t_0 = t0``, ``t_read``, the three scales, and
  ``g_max`` = the device's g_max in uS. Both implement Nandakumar et al. (ICECS 2019) in the
  normalised target ``G/g_max`` (see :mod:`xbarprune.hardware.nonideal.pcm`): exact.
* without ``pcm``: ``variation`` (absolute / relative) and ``drift`` -> aihwkit's
  ``StateIndependentNoiseModel`` (``prog_coeff = [sigma dG, 0, 0]`` resp. ``[0, sigma g_max,
  0]`` uS, ``drift_nu_mean/std``, ``t_0``; read noise off). Approximate: aihwkit rectifies
  ``|nu|`` where we clip at 0, and drifts to ``t_inf + t_0`` where we drift to ``t``.
* ``drift_compensation`` -> ``GlobalDriftCompensation`` (approximate: aihwkit reads the tile
  with a one-hot vector after programming noise; our analog layer uses an all-ones read-out
  against the target weights, docs/benchmarks_aihwkit.md).
* ``io`` (:class:`~xbarprune.hardware.nonideal.io.IOConfig`, aihwkit's ``IOParameters``
  re-implemented with the same field names) -> ``forward`` field by field (None -> aihwkit's
  ``<= 0``; ``abs_max``/``iterative``/``none`` -> ``AbsMax``/``Iterative``/``None``),
  ``mapping.weight_scaling_omega`` and ``max_input_size``; exact (``per_tile: true``:
  aihwkit tiles of the crossbar's rows x weights_per_row, approximate).
* without ``io``: ``dac_bits`` / ``adc_bits`` -> ``forward.inp_res`` / ``forward.out_res`` =
  ``1 / (2**bits - 2)`` (a signed symmetric grid of ``2**bits - 2`` steps, our
  :func:`~xbarprune.hardware.nonideal.converters.quantize_uniform`); no converter at all ->
  ``forward.is_perfect = True``. Approximate: aihwkit scales each input vector by its own
  abs-max (``noise_management``) and clips outputs at a fixed ``out_bound``; ours calibrates
  one DAC and one ADC full scale per layer / tile column on the first batch. ``out_noise``,
  ``inp_noise`` and ``w_noise`` are set to 0 (we model none of them) and bound management off.
* crossbar -> ``mapping.max_input_size = rows``, ``max_output_size = weights_per_row``
  (aihwkit scales weights per tile; ours per layer: approximate), digital bias (both).

Never translated: ``quantization`` (programmed levels), ``aging``, ``faults`` (stuck-at),
``ir_drop`` (our nodal solve; aihwkit's ``forward.ir_drop`` is another, simplified model),
``read_noise`` (fresh per inference), ``lognormal`` variation, ``variation``/``drift`` next to
``pcm`` (aihwkit has one noise model per tile), ``column_calibration``, ``row_calibration``,
``adc_full_scale``, ``read_disturb`` (and any section this translation does not know), the
``offset`` encoding and bit slicing (``cells_per_weight > 1``).

**Import** (:func:`nonideal_from_aihwkit`) reads an aihwkit config, live or as a plain mapping
dumped from it (:func:`aihwkit_config_dict`; a YAML/JSON file for ``nonideal: {from_aihwkit:
FILE}``, so nothing is ever unpickled), into a :class:`NonIdealityConfig` by the inverse of
the rules above; a non-perfect ``forward`` becomes ``io`` (so aihwkit's default config reads
in as our preset ``aihwkit-default``). Settings with an effect we cannot model (e.g.
``forward.w_noise``, ``forward.ir_drop``, a ReRAM noise model) raise one
:class:`~xbarprune.errors.TranslationError` naming them all; ``ignore=[...]`` drops named
settings on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from torch import nn

from xbarprune.errors import ExportError, SpecError, TranslationError
from xbarprune.hardware.nonideal.io import IOConfig
from xbarprune.hardware.nonideal.model import (
    Drift,
    NonIdealityConfig,
    PCMStatistical,
    ProgrammingVariation,
)
from xbarprune.hardware.nonideal.pcm import PCM_G_MAX_REF_US
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec

AIHWKIT_VERSION = "1.1.0"
INSTALL_HINT = (
    "aihwkit is optional: pip install --no-deps aihwkit==1.1.0 (its modules used here need "
    "only torch, numpy and scipy)"
)
US = 1e6  # siemens -> microsiemens


def _import_aihwkit():
    try:
        import aihwkit.inference as inference
        import aihwkit.nn as ann
        import aihwkit.simulator.configs as configs
    except Exception as exc:  # ImportError, or a broken install
        raise ExportError(f"aihwkit is not importable ({exc}); {INSTALL_HINT}") from exc
    return inference, ann, configs


# --------------------------------------------------------------------------- records
@dataclass
class Translation:
    """The aihwkit settings of one of our configs, and what did not carry over."""

    spec: dict[str, Any]
    approximate: list[dict[str, Any]] = field(default_factory=list)
    untranslated: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "aihwkit": AIHWKIT_VERSION,
            "rpu_config": self.spec,
            "approximate": self.approximate,
            "untranslated": self.untranslated,
        }


def _bits_to_res(bits: int) -> float:
    """``1 / (2**bits - 2)``: the step of a signed symmetric ``bits``-bit grid over [-1, 1]/2."""
    if bits < 2:
        return 1.0  # a signed 1-bit converter has no non-zero level (ours refuses it)
    return 1.0 / (2**bits - 2)


# --------------------------------------------------------------------------- export
def translate_to_aihwkit(
    cfg: NonIdealityConfig, crossbar: CrossbarSpec, device: DeviceSpec
) -> Translation:
    """The aihwkit spec of ``cfg`` on ``crossbar`` / ``device`` (see the module docstring)."""
    tr = Translation(spec={})
    approx, untr = tr.approximate, tr.untranslated

    def note(lst, setting, value, reason):
        lst.append({"setting": setting, "value": value, "reason": reason})

    g_max, g_min = device.g_max * US, device.g_min * US
    converter = {"type": "SinglePairConductanceConverter", "g_max": g_max, "g_min": g_min}
    # ---- noise model
    if cfg.pcm is not None:
        p = cfg.pcm
        tr.spec["noise_model"] = {
            "type": "PCMLikeNoiseModel",
            "prog_coeff": [float(c) for c in p.prog_coeff],
            "prog_coeff_g_max_reference": PCM_G_MAX_REF_US,
            "g_converter": converter,
            "t_0": p.t0,
            "t_read": p.t_read,
            "prog_noise_scale": p.prog_noise_scale,
            "read_noise_scale": p.read_noise_scale,
            "drift_scale": p.drift_scale,
        }
        for sec in ("variation", "drift"):
            if getattr(cfg, sec) is not None:
                note(
                    untr,
                    f"nonideal.{sec}",
                    _asdict(getattr(cfg, sec)),
                    "aihwkit has one noise model per tile, here PCMLikeNoiseModel",
                )
    else:
        coeff = [0.0, 0.0, 0.0]
        v = cfg.variation
        if v is not None and v.mode in ("absolute", "relative"):
            if v.mode == "absolute":
                coeff[0] = v.sigma * (g_max - g_min)
            else:
                coeff[1] = v.sigma * g_max
            if v.mode == "relative" and g_min > 0:
                note(
                    approx,
                    "nonideal.variation",
                    _asdict(v),
                    "aihwkit's polynomial is in G/g_max from 0; with g_min > 0 the relative "
                    "sigma is taken on G - g_min",
                )
        elif v is not None:
            note(
                untr,
                "nonideal.variation",
                _asdict(v),
                f"mode '{v.mode}' has no aihwkit counterpart (a polynomial std only)",
            )
        d = cfg.drift
        tr.spec["noise_model"] = {
            "type": "StateIndependentNoiseModel",
            "g_converter": converter,
            "prog_coeff": coeff,
            "prog_noise_scale": 1.0,
            "drift_nu_mean": d.nu_mean if d else 0.0,
            "drift_nu_std": d.nu_std if d else 0.0,
            "drift_scale": 1.0 if d else 0.0,
            "t_0": d.t0 if d else 20.0,
            "read_noise_scale": 0.0,
            "t_read": 250e-9,
        }
        if d is not None:
            note(
                approx,
                "nonideal.drift",
                _asdict(d),
                "aihwkit draws nu = |N(mean, std)| (ours clips at 0) and drifts to "
                "t_inference + t_0 (ours to t)",
            )
    # ---- drift compensation
    if cfg.drift_compensation:
        tr.spec["drift_compensation"] = {"type": "GlobalDriftCompensation"}
        if cfg.io is None:  # with io, our layer reads one-hot vectors through it, as aihwkit
            note(
                approx,
                "nonideal.drift_compensation",
                True,
                "aihwkit reads a one-hot vector through its periphery after programming "
                "noise; without io our layer reads an all-ones vector against the target "
                "weights (docs/benchmarks_aihwkit.md)",
            )
    else:
        tr.spec["drift_compensation"] = None
    # ---- forward I/O
    fwd: dict[str, Any]
    mapping: dict[str, Any] = {
        "digital_bias": True,
        "max_input_size": crossbar.rows,
        "max_output_size": crossbar.weights_per_row,
    }
    if cfg.io is not None:
        fwd, mapping = _io_to_forward(cfg.io, crossbar)
        if cfg.io.per_tile:
            note(
                approx,
                "nonideal.io.per_tile",
                True,
                "our periphery acts per crossbar tile row band and cell slice; aihwkit per "
                "tile of max_input_size x max_output_size (set to the crossbar's rows x "
                "weights_per_row)",
            )
    elif cfg.dac_bits is None and cfg.adc_bits is None:
        fwd = {"is_perfect": True}
    else:
        fwd = {
            "is_perfect": False,
            "inp_res": _bits_to_res(cfg.dac_bits) if cfg.dac_bits is not None else -1.0,
            "out_res": _bits_to_res(cfg.adc_bits) if cfg.adc_bits is not None else -1.0,
            "inp_noise": 0.0,
            "out_noise": 0.0,
            "w_noise": 0.0,
            "bound_management": "None",
            "noise_management": "AbsMax",
        }
        if cfg.adc_bits is None:
            fwd["out_bound"] = -1.0
        note(
            approx,
            "nonideal.dac_bits/adc_bits",
            [cfg.dac_bits, cfg.adc_bits],
            "aihwkit scales each input vector by its abs-max and clips outputs at a fixed "
            "out_bound; ours calibrates one DAC and per-tile-column ADC full scale on the "
            "first batch",
        )
    tr.spec["forward"] = fwd
    # ---- mapping
    tr.spec["mapping"] = mapping
    if cfg.io is None:
        note(
            approx,
            "crossbar",
            _asdict(crossbar),
            "aihwkit splits layers into rows x weights_per_row tiles as we do, but scales "
            "weights to conductances per tile (ours per layer)",
        )
    if crossbar.encoding != "differential":
        note(
            untr,
            "crossbar.encoding",
            crossbar.encoding,
            "aihwkit's converters are differential pairs; no reference-column encoding",
        )
    if crossbar.cells_per_weight != 1:
        note(
            untr,
            "crossbar.cells_per_weight",
            crossbar.cells_per_weight,
            "bit slicing over several cells per weight has no aihwkit inference counterpart",
        )
    # ---- never translated
    reasons = {
        "quantization": "aihwkit inference tiles program continuous conductances (no levels)",
        "aging": "no endurance/aging model in aihwkit",
        "faults": "no stuck-at-fault model in aihwkit's inference noise models",
        "ir_drop": "our nodal IR-drop solve has no counterpart (aihwkit's forward.ir_drop is a "
        "different, simplified model)",
        "read_noise": "a fresh read-noise draw per inference is not expressible exactly "
        "(aihwkit's w_noise is in normalised weight units, per forward)",
    }
    for sec, why in reasons.items():
        val = getattr(cfg, sec)
        if val is not None:
            note(untr, f"nonideal.{sec}", _asdict(val), why)
    for flag, why in (
        ("column_calibration", "our per-column digital gain calibration"),
        ("row_calibration", "our per-tile-row digital input gain calibration"),
    ):
        if getattr(cfg, flag):
            note(untr, f"nonideal.{flag}", True, why + " has no aihwkit counterpart")
    # any other section set (e.g. read_disturb, or one added after this translation)
    for f in fields(cfg):
        if f.name in _HANDLED:
            continue
        val = getattr(cfg, f.name)
        if val is not None and val is not False:
            why = _OTHER_REASONS.get(f.name, "no aihwkit counterpart known to this translation")
            note(untr, f"nonideal.{f.name}", _asdict(val), why)
    if cfg.adc_full_scale is not None:
        note(
            untr,
            "nonideal.adc_full_scale",
            cfg.adc_full_scale,
            "a fixed ADC full scale in our layer's units; aihwkit's out_bound is relative",
        )
    return tr


#: NonIdealityConfig fields the translation handles; any other field set is untranslated
_HANDLED = frozenset(
    {"quantization", "aging", "variation", "faults", "pcm", "drift", "ir_drop", "read_noise",
     "dac_bits", "adc_bits", "adc_full_scale", "drift_compensation", "column_calibration",
     "row_calibration", "io"}
)  # fmt: skip
_OTHER_REASONS = {
    "read_disturb": "aihwkit has no read-disturb model (conductance change under repeated reads)",
}

_NM = {"abs_max": "AbsMax", "none": "None"}
_BM = {"iterative": "Iterative", "none": "None"}


def _io_to_forward(io: IOConfig, crossbar: CrossbarSpec) -> tuple[dict, dict]:
    """aihwkit ``forward`` and ``mapping`` of our :class:`IOConfig` (same field names; None
    is aihwkit's ``<= 0``)."""
    fwd = {
        "is_perfect": False,
        "inp_res": -1.0 if io.inp_res is None else io.inp_res,
        "inp_bound": io.inp_bound,
        "inp_noise": io.inp_noise,
        "out_res": -1.0 if io.out_res is None else io.out_res,
        "out_bound": -1.0 if io.out_bound is None else io.out_bound,
        "out_noise": io.out_noise,
        "w_noise": 0.0,
        "noise_management": _NM[io.noise_management],
        "nm_thres": io.nm_thres,
        "bound_management": _BM[io.bound_management],
        "max_bm_factor": io.max_bm_factor,
        "max_bm_res": io.max_bm_res,
    }
    mapping = {
        "digital_bias": True,
        "weight_scaling_omega": io.weight_scaling_omega,
        "max_input_size": crossbar.rows if io.per_tile else io.max_input_size,
        # aihwkit: both sizes 0 = one tile per layer; else its default output size
        "max_output_size": crossbar.weights_per_row
        if io.per_tile
        else (0 if io.max_input_size == 0 else 512),
    }
    return fwd, mapping


def _asdict(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _asdict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_asdict(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- aihwkit objects
def build_rpu_config(spec: dict[str, Any]):
    """A ``TorchInferenceRPUConfig`` (an ``InferenceRPUConfig`` on aihwkit's pure-PyTorch
    tiles) from a spec of :func:`translate_to_aihwkit`. Needs aihwkit."""
    inference, _, configs = _import_aihwkit()
    from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
    from aihwkit.simulator.parameters import enums

    rpu = configs.TorchInferenceRPUConfig()
    for k, v in spec.get("forward", {}).items():
        if k in ("bound_management", "noise_management"):
            cls = (
                enums.BoundManagementType if k == "bound_management" else enums.NoiseManagementType
            )
            v = cls(v)
        elif k == "w_noise_type":
            v = enums.WeightNoiseType(v)
        setattr(rpu.forward, k, v)
    for k, v in spec.get("mapping", {}).items():
        setattr(rpu.mapping, k, v)
    nm = dict(spec["noise_model"])
    kind = nm.pop("type")
    conv = nm.pop("g_converter")
    ref = nm.pop("prog_coeff_g_max_reference", None)
    gc = SinglePairConductanceConverter(g_max=conv["g_max"], g_min=conv["g_min"])
    from aihwkit.inference.noise.custom import StateIndependentNoiseModel

    cls = {
        "PCMLikeNoiseModel": inference.PCMLikeNoiseModel,
        "StateIndependentNoiseModel": StateIndependentNoiseModel,
    }[kind]
    model = cls(g_converter=gc, **nm)
    if ref is not None:
        # set after construction: aihwkit 1.1.0 only stores the reference when it is None
        model.prog_coeff_g_max_reference = ref
    rpu.noise_model = model
    dc = spec.get("drift_compensation")
    rpu.drift_compensation = None if dc is None else inference.GlobalDriftCompensation()
    return rpu


def to_analog_sequential(model: nn.Module, rpu_config, layers: list[str] | None = None):
    """``model`` (a copy) with every Conv2d/Linear (or the named ``layers``) replaced by
    aihwkit's ``AnalogConv2d``/``AnalogLinear`` holding the same weights and biases, wrapped
    in an ``AnalogSequential`` (a container whose ``program_analog_weights`` and
    ``drift_analog_weights`` reach every analog layer). Needs aihwkit."""
    import copy
    from collections import OrderedDict

    _, ann, _ = _import_aihwkit()
    m = copy.deepcopy(model).cpu().eval()
    names = layers
    if names is None:
        names = [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
    mods = dict(m.named_modules())
    for name in names:
        mod = mods[name]
        bias = mod.bias is not None
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise ExportError(
                    f"layer '{name}': only groups=1, zero-padded Conv2d with numeric padding "
                    "converts to aihwkit here"
                )
            new = ann.AnalogConv2d(
                mod.in_channels,
                mod.out_channels,
                mod.kernel_size,
                stride=mod.stride,
                padding=mod.padding,
                dilation=mod.dilation,
                bias=bias,
                rpu_config=rpu_config,
            )
        elif isinstance(mod, nn.Linear):
            new = ann.AnalogLinear(
                mod.in_features, mod.out_features, bias=bias, rpu_config=rpu_config
            )
        else:
            raise ExportError(f"layer '{name}' ({type(mod).__name__}) is not Conv2d/Linear")
        new.set_weights(mod.weight.detach().clone(), mod.bias.detach().clone() if bias else None)
        parent = m
        *path, last = name.split(".")
        for p in path:
            parent = getattr(parent, p)
        setattr(parent, last, new)
    return ann.AnalogSequential(OrderedDict([("model", m)])).eval()


# --------------------------------------------------------------------------- import
#: aihwkit 1.1.0 IOParameters fields whose value has an effect we cannot model, with the value
#: at which they are neutral (a setting with the neutral value is accepted).
_IO_NEUTRAL: dict[str, Any] = {
    "out_noise_std": 0.0,
    "w_noise": 0.0,
    "inp_asymmetry": 0.0,
    "out_asymmetry": 0.0,
    "out_scale": 1.0,
    "ir_drop": 0.0,
    "out_nonlinearity": 0.0,
    "out_nonlinearity_std": 0.0,
    "slope_calibration": 0.0,
    "v_offset_std": 0.0,
    "r_series": 0.0,
    "w_read_asymmetry_dtod": 0.0,
    "inp_sto_round": False,
    "out_sto_round": False,
    "mv_type": "OnePass",
}
#: IOParameters fields that map one to one onto our IOConfig.
_IO_FIELDS = (
    "inp_res",
    "inp_bound",
    "inp_noise",
    "out_res",
    "out_bound",
    "out_noise",
    "noise_management",
    "nm_thres",
    "bound_management",
    "max_bm_factor",
    "max_bm_res",
)
#: fields without effect while the ones they qualify are neutral (w_noise = 0, v_offset_std =
#: 0, ir_drop = 0) or that only steer aihwkit's batch-wide bound test.
_IO_IGNORED = ("bm_test_negative_bound", "ir_drop_g_ratio", "v_offset_w_min", "w_noise_type")
_PCM_KEYS = {
    "prog_coeff",
    "prog_coeff_g_max_reference",
    "g_max",
    "g_converter",
    "t_0",
    "t_read",
    "prog_noise_scale",
    "read_noise_scale",
    "drift_scale",
}
_SI_KEYS = {
    "prog_coeff",
    "g_max",
    "g_converter",
    "prog_noise_scale",
    "drift_nu_mean",
    "drift_nu_std",
    "drift_scale",
    "t_0",
    "read_noise_scale",
    "t_read",
}


def _plain(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, float | int | str | bool) or v is None:
        return v
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def aihwkit_config_dict(rpu_config) -> dict[str, Any]:
    """Plain-data dump of an aihwkit inference RPU config (the fields this module reads):
    ``forward`` (every IOParameters field), ``mapping``, ``noise_model`` (its type, its
    numeric attributes and ``g_converter``), ``drift_compensation`` (its type or None) and
    the ``type`` of ``clip``/``remap``/``modifier``. Write it as YAML/JSON for
    ``nonideal: {from_aihwkit: FILE}``."""
    out: dict[str, Any] = {"type": type(rpu_config).__name__}
    out["forward"] = {
        f.name: _plain(getattr(rpu_config.forward, f.name)) for f in fields(rpu_config.forward)
    }
    out["mapping"] = {
        f.name: _plain(getattr(rpu_config.mapping, f.name)) for f in fields(rpu_config.mapping)
    }
    nm = rpu_config.noise_model
    d: dict[str, Any] = {"type": type(nm).__name__}
    for k, v in vars(nm).items():
        if k == "g_converter":
            d[k] = {
                "type": type(v).__name__,
                "g_max": getattr(v, "g_max", None),
                "g_min": getattr(v, "g_min", None),
            }
        elif not k.startswith("_"):
            d[k] = _plain(v)
    out["noise_model"] = d
    dc = rpu_config.drift_compensation
    out["drift_compensation"] = None if dc is None else {"type": type(dc).__name__}
    for sec in ("clip", "remap", "modifier"):
        obj = getattr(rpu_config, sec, None)
        if obj is not None:
            out[sec] = {"type": _plain(getattr(obj, "type", None))}
    return out


def load_aihwkit_file(path: str | Path) -> dict[str, Any]:
    """A dumped aihwkit config (YAML or JSON, parsed with ``yaml.safe_load``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TranslationError(f"nonideal.from_aihwkit: file {p} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise TranslationError(f"nonideal.from_aihwkit: {p} is not YAML/JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TranslationError(f"nonideal.from_aihwkit: {p} must hold a mapping of fields")
    return data


def nonideal_from_aihwkit(
    rpu_config: Any, *, ignore: tuple[str, ...] | list[str] = (), notes: list | None = None
) -> NonIdealityConfig:
    """Our :class:`NonIdealityConfig` from an aihwkit inference RPU config.

    ``rpu_config``: a live aihwkit config, a mapping as written by :func:`aihwkit_config_dict`
    (a section or field left out takes aihwkit 1.1's default, as an ``InferenceRPUConfig``
    would: ``PCMLikeNoiseModel()``, ``GlobalDriftCompensation()``, the default
    ``IOParameters``; give ``drift_compensation: null`` or ``forward: {is_perfect: true}``
    to turn them off), or a path to such a YAML/JSON file. Settings with an effect we cannot
    model raise one :class:`TranslationError` naming each (``section.field = value``),
    unless listed in ``ignore`` (same dotted names). ``notes`` (a list) receives the settings
    taken only approximately. The device window (``g_max``, ``g_min``) belongs to our
    ``DeviceSpec``, not to this config; the PCM statistics are in ``G/g_max`` and do not
    depend on it.
    """
    if isinstance(rpu_config, str | Path):
        d = load_aihwkit_file(rpu_config)
    elif isinstance(rpu_config, dict):
        d = rpu_config
    else:
        d = aihwkit_config_dict(rpu_config)
    ign = set(ignore)
    bad: list[str] = []
    approx: list[str] = [] if notes is None else notes

    def flag(name: str, value: Any) -> None:
        if name not in ign:
            bad.append(f"{name} = {value!r}")

    known_top = {
        "type",
        "forward",
        "mapping",
        "noise_model",
        "drift_compensation",
        "clip",
        "remap",
        "modifier",
    }
    for k in d:
        if k not in known_top:
            flag(k, d[k])
    kw: dict[str, Any] = {}
    try:
        _read_sections(d, kw, flag, approx, bad)
    except (SpecError, TypeError, ValueError, AttributeError) as exc:  # a malformed value
        bad.append(f"malformed aihwkit setting ({type(exc).__name__}: {exc})")
    if bad:
        raise TranslationError(
            "aihwkit setting(s) that xbarprune cannot translate: "
            + "; ".join(bad)
            + " (set them neutral in aihwkit, or list them under ignore)"
        )
    return NonIdealityConfig(**kw)


def _read_sections(d: dict, kw: dict, flag, approx: list, bad: list) -> None:
    """The body of :func:`nonideal_from_aihwkit`: fills ``kw`` (NonIdealityConfig fields)."""
    # ---- noise model
    nm = d.get("noise_model", {"type": "PCMLikeNoiseModel"})
    if nm is not None:
        nm = dict(nm)
        kind = nm.pop("type", "PCMLikeNoiseModel")
        conv = nm.get("g_converter") or {}
        if conv and conv.get("type", "SinglePairConductanceConverter") != (
            "SinglePairConductanceConverter"
        ):
            flag("noise_model.g_converter.type", conv.get("type"))
        g_max = conv.get("g_max") or nm.get("g_max") or PCM_G_MAX_REF_US
        g_min = conv.get("g_min") or 0.0
        if kind == "PCMLikeNoiseModel":
            for k in sorted(set(nm) - _PCM_KEYS):
                flag(f"noise_model.{k}", nm[k])
            coeff = list(nm.get("prog_coeff") or [0.26348, 1.9650, -1.1731])
            ref = nm.get("prog_coeff_g_max_reference")
            if ref is None:
                ref = PCM_G_MAX_REF_US if nm.get("prog_coeff") is None else g_max
            # aihwkit: sigma = poly(x) * g_max / ref; ours: poly'(x) / 25 * g_max
            coeff = [c * PCM_G_MAX_REF_US / ref for c in coeff]
            kw["pcm"] = PCMStatistical(
                prog_coeff=tuple(coeff),
                t0=float(nm.get("t_0", 20.0)),
                t_read=float(nm.get("t_read", 250e-9)),
                prog_noise_scale=float(nm.get("prog_noise_scale", 1.0)),
                read_noise_scale=float(nm.get("read_noise_scale", 1.0)),
                drift_scale=float(nm.get("drift_scale", 1.0)),
            )
        elif kind == "StateIndependentNoiseModel":
            for k in sorted(set(nm) - _SI_KEYS):
                flag(f"noise_model.{k}", nm[k])
            c = list(nm.get("prog_coeff") or [0.2, 0.0, 0.0]) + [0.0, 0.0]
            s = float(nm.get("prog_noise_scale", 1.0))
            if c[2] != 0 or (c[0] != 0 and c[1] != 0):
                flag("noise_model.prog_coeff", nm.get("prog_coeff"))
            elif c[0] != 0 and s != 0:
                kw["variation"] = ProgrammingVariation(
                    sigma=s * c[0] / (g_max - g_min), mode="absolute"
                )
            elif c[1] != 0 and s != 0:
                kw["variation"] = ProgrammingVariation(sigma=s * c[1] / g_max, mode="relative")
            scale = float(nm.get("drift_scale", 1.0))
            mean = scale * float(nm.get("drift_nu_mean", 0.1))
            std = scale * float(nm.get("drift_nu_std", 0.05))
            if mean or std:
                kw["drift"] = Drift(nu_mean=mean, nu_std=std, t0=float(nm.get("t_0", 20.0)))
                approx.append("noise_model.drift_nu_*: |nu| vs ours clipped at 0; t + t_0 vs t")
            if float(nm.get("read_noise_scale", 1.0)) != 0:
                flag("noise_model.read_noise_scale", nm.get("read_noise_scale", 1.0))
        else:
            flag("noise_model.type", kind)
    # ---- drift compensation
    dc = d.get("drift_compensation", {"type": "GlobalDriftCompensation"})
    if dc is not None:
        t = dc.get("type") if isinstance(dc, dict) else dc
        if t == "GlobalDriftCompensation":
            kw["drift_compensation"] = True
        else:
            flag("drift_compensation.type", t)
    # ---- forward I/O -> IOConfig (aihwkit's IOParameters, same names)
    fwd = dict(d.get("forward") or {})
    mp = d.get("mapping") or {}
    if not fwd.get("is_perfect", False):
        io_kw: dict[str, Any] = {}
        for k in ("inp_res", "out_res", "out_bound"):
            if k in fwd:
                v = float(fwd[k])
                io_kw[k] = None if v <= 0 else v
        for k in ("inp_bound", "inp_noise", "out_noise", "nm_thres", "max_bm_res"):
            if k in fwd:
                io_kw[k] = float(fwd[k])
        if "max_bm_factor" in fwd:
            io_kw["max_bm_factor"] = int(fwd["max_bm_factor"])
        for k, table in (("noise_management", _NM), ("bound_management", _BM)):
            if k in fwd:
                inv = {v: kk for kk, v in table.items()}
                if fwd[k] in inv:
                    io_kw[k] = inv[fwd[k]]
                else:
                    flag(f"forward.{k}", fwd[k])
        if "weight_scaling_omega" in mp:
            io_kw["weight_scaling_omega"] = float(mp["weight_scaling_omega"])
        if "max_input_size" in mp:
            io_kw["max_input_size"] = int(mp["max_input_size"])
        for k, neutral in _IO_NEUTRAL.items():
            if k in fwd and fwd[k] != neutral:
                flag(f"forward.{k}", fwd[k])
        taken = {"is_perfect", *_IO_FIELDS, *_IO_NEUTRAL, *_IO_IGNORED}
        for k in sorted(set(fwd) - taken):
            if k.startswith("ir_drop") or k in ("adc_quantization", "adc_frequency"):
                continue  # ir-drop time-step settings: inert while forward.ir_drop = 0
            if k == "apply_xdep_pcm_read_noise" and not fwd[k]:
                continue
            flag(f"forward.{k}", fwd[k])
        try:
            kw["io"] = IOConfig(**io_kw)
        except SpecError as exc:
            bad.append(f"forward: {exc}")
        if int(mp.get("max_output_size", 0) or 0) > 0:
            approx.append("mapping.max_output_size: our periphery splits layers by inputs only")
    # ---- mapping and training-time settings
    if mp.get("digital_bias", True) is False:
        flag("mapping.digital_bias", False)
    for k in ("weight_scaling_columnwise", "learn_out_scaling", "out_scaling_columnwise"):
        if mp.get(k):
            flag(f"mapping.{k}", mp[k])
    for sec in ("clip", "remap", "modifier"):
        t = (d.get(sec) or {}).get("type")
        if t not in (None, "None"):
            approx.append(f"{sec}.type = {t!r} (training-time only; ignored for inference)")


def resolve_from_aihwkit(section: Any, base: Path | None = None) -> Any:
    """A config's ``nonideal`` section with ``{from_aihwkit: FILE[, ignore: [...]]}`` (FILE
    relative to ``base``) replaced by the translated mapping; anything else unchanged."""
    from xbarprune.config import to_dict

    if not isinstance(section, dict) or "from_aihwkit" not in section:
        return section
    extra = sorted(set(section) - {"from_aihwkit", "ignore"})
    if extra:
        raise TranslationError(
            f"nonideal.from_aihwkit cannot be combined with {', '.join(extra)}; allowed keys: "
            "from_aihwkit, ignore"
        )
    p = Path(section["from_aihwkit"])
    if not p.is_absolute() and base is not None:
        p = base / p
    cfg = nonideal_from_aihwkit(p, ignore=tuple(section.get("ignore") or ()))
    return {k: v for k, v in to_dict(cfg).items() if v is not None and v is not False}


def translation_markdown(tr: Translation, title: str = "aihwkit export") -> str:
    """Human-readable list of the settings taken approximately and those left out."""
    lines = [f"# {title}", "", f"aihwkit {AIHWKIT_VERSION}, `TorchInferenceRPUConfig`.", ""]
    lines += ["## Not translated (left out)", ""]
    lines += [
        f"- `{r['setting']}` = `{json.dumps(r['value'])}`: {r['reason']}" for r in tr.untranslated
    ] or ["- nothing"]
    lines += ["", "## Translated approximately", ""]
    lines += [f"- `{r['setting']}`: {r['reason']}" for r in tr.approximate] or ["- nothing"]
    lines += ["", "## aihwkit settings", "", "```json", json.dumps(tr.spec, indent=2), "```", ""]
    return "\n".join(lines)


def perfect_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with perfect I/O and every noise scale 0 (for equality checks)."""
    s = json.loads(json.dumps(spec))
    s["forward"] = {"is_perfect": True}
    nm = s["noise_model"]
    for k in ("prog_noise_scale", "read_noise_scale", "drift_scale"):
        nm[k] = 0.0
    return s


__all__ = [
    "Translation",
    "aihwkit_config_dict",
    "build_rpu_config",
    "load_aihwkit_file",
    "nonideal_from_aihwkit",
    "perfect_spec",
    "resolve_from_aihwkit",
    "to_analog_sequential",
    "translate_to_aihwkit",
    "translation_markdown",
]


# --------------------------------------------------------------------------- export files
DIGITAL_FORMAT = "xbarprune-digital-1"


def digital_checkpoint(
    model: nn.Module, build: dict[str, Any], arch: dict | None, layers: list[str]
) -> dict[str, Any]:
    """A ``weights_only``-safe checkpoint that rebuilds ``model`` without its run directory:
    the zoo build arguments, the shrunk architecture (if any), the state dict and the names
    of the crossbar-mapped layers."""
    return {
        "format": DIGITAL_FORMAT,
        "build": build,
        "architecture": arch,
        "layers": list(layers),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def load_digital(path: str | Path) -> tuple[nn.Module, list[str]]:
    """The digital model of :func:`digital_checkpoint` (``weights_only`` load) and the names
    of its mapped layers."""
    from xbarprune.errors import CheckpointError
    from xbarprune.interop.architecture import apply_architecture
    from xbarprune.io import load_checkpoint, load_state_into
    from xbarprune.models import build_model

    ck = load_checkpoint(path)
    if ck.get("format") != DIGITAL_FORMAT:
        raise CheckpointError(f"{path} is not an xbarprune export checkpoint ({DIGITAL_FORMAT})")
    b = dict(ck["build"])
    name, kwargs = b.pop("name"), b.pop("kwargs", {}) or {}
    model = build_model(name, **b, **kwargs)
    apply_architecture(model, ck.get("architecture"))
    load_state_into(model, ck["state_dict"], str(path))
    return model.eval(), list(ck["layers"])


def _py(v: Any) -> str:
    return repr(v)


def rpu_config_code(spec: dict[str, Any]) -> str:
    """Python source of a function ``rpu_config()`` building ``spec`` with aihwkit's API."""
    nm = dict(spec["noise_model"])
    kind = nm.pop("type")
    conv = nm.pop("g_converter")
    ref = nm.pop("prog_coeff_g_max_reference", None)
    imports = {
        "from aihwkit.inference.converter.conductance import SinglePairConductanceConverter",
        "from aihwkit.simulator.configs import TorchInferenceRPUConfig",
    }
    if kind == "PCMLikeNoiseModel":
        imports.add("from aihwkit.inference import PCMLikeNoiseModel")
    else:
        imports.add("from aihwkit.inference.noise.custom import StateIndependentNoiseModel")
    body = ["rpu = TorchInferenceRPUConfig()"]
    for k, v in spec.get("forward", {}).items():
        if k == "bound_management":
            imports.add("from aihwkit.simulator.parameters.enums import BoundManagementType")
            body.append(f"rpu.forward.{k} = BoundManagementType({v!r})")
        elif k == "noise_management":
            imports.add("from aihwkit.simulator.parameters.enums import NoiseManagementType")
            body.append(f"rpu.forward.{k} = NoiseManagementType({v!r})")
        elif k == "w_noise_type":
            imports.add("from aihwkit.simulator.parameters.enums import WeightNoiseType")
            body.append(f"rpu.forward.{k} = WeightNoiseType({v!r})")
        else:
            body.append(f"rpu.forward.{k} = {_py(v)}")
    for k, v in spec.get("mapping", {}).items():
        body.append(f"rpu.mapping.{k} = {_py(v)}")
    args = ", ".join(f"{k}={_py(v)}" for k, v in nm.items())
    body.append(
        f"rpu.noise_model = {kind}(\n        g_converter=SinglePairConductanceConverter("
        f"g_max={conv['g_max']!r}, g_min={conv['g_min']!r}),\n        {args},\n    )"
    )
    if ref is not None:
        body.append("# set after construction: aihwkit 1.1.0 keeps it only when None is passed")
        body.append(f"rpu.noise_model.prog_coeff_g_max_reference = {ref!r}")
    if spec.get("drift_compensation"):
        imports.add("from aihwkit.inference import GlobalDriftCompensation")
        body.append("rpu.drift_compensation = GlobalDriftCompensation()")
    else:
        body.append("rpu.drift_compensation = None")
    body.append("return rpu")
    lines = [
        "def rpu_config():",
        '    """The translated InferenceRPUConfig (aihwkit\'s '
        'pure-PyTorch TorchInferenceRPUConfig)."""',
    ]
    lines += [f"    {imp}" for imp in sorted(imports)]
    lines += ["", *(f"    {b}" for b in body)]
    return "\n".join(lines) + "\n"


def export_script(spec: dict[str, Any], checkpoint_name: str, title: str, notes_name: str) -> str:
    """A standalone Python script that builds the exported network as an aihwkit
    ``AnalogSequential`` with the translated RPU config (needs xbarprune and aihwkit)."""
    return f'''"""{title} as an IBM aihwkit AnalogSequential (written by `xbarprune export --format
aihwkit`; aihwkit {AIHWKIT_VERSION}).

Settings of the run that do not translate to aihwkit are listed in {notes_name}.

    python {checkpoint_name.rsplit(".", 1)[0]}.py        # builds the network and prints it

or ``build()`` from Python. The weights come from {checkpoint_name} (loaded with
weights_only=True); ``rpu_config()`` is plain aihwkit code, edit it freely.
"""

from pathlib import Path

from xbarprune.interop.aihwkit import load_digital, to_analog_sequential

HERE = Path(__file__).resolve().parent
CHECKPOINT = HERE / {checkpoint_name!r}


{rpu_config_code(spec)}

def build(rpu=None):
    """The compressed network as an aihwkit AnalogSequential (eval mode)."""
    model, layers = load_digital(CHECKPOINT)
    return to_analog_sequential(model, rpu if rpu is not None else rpu_config(), layers)


if __name__ == "__main__":
    print(build())
'''
