"""Hardware-aware (noise-injection) training: the ``hwa`` section of ``train:`` / ``finetune:``.

While a model trains (``module.training``), every Conv2d/Linear layer computes its forward
with a perturbed copy of its weights and, optionally, through the peripheral I/O model; its
parameters, the backward target, stay clean. Following:

* Joshi et al., "Accurate deep neural network inference using computational phase-change
  memory", Nat. Commun. 11, 2473 (2020): additive Gaussian weight noise, fresh at every
  mini-batch, with a std relative to the layer's largest |weight| (their eta_tr), makes a
  network robust to PCM programming noise and drift;
* Rasch et al., "Hardware-aware training for large-scale and diverse deep learning inference
  workloads using in-memory computing-based accelerators", Nat. Commun. 14, 5282 (2023): the
  same with the forward's I/O non-idealities (output noise, DAC/ADC quantisation) in the
  loop and straight-through gradients;
* aihwkit's weight modifiers (``WeightModifierParameter``: ``ADD_NORMAL`` = noise of std
  ``std_dev * max|W|``; ``PCM_NOISE`` = the PCM programming-noise polynomial), applied per
  mini-batch in the forward only.

The weight perturbation is, per layer with ``w_max = max |W|``::

    weight_noise > 0 :  W~ = W + weight_noise * w_max * N
    preset with pcm   :  W~ = W + w_max * sqrt(s(|W|/w_max)^2 + s(0)^2) * N,
                         s(x) = (c0 + c1 x + c2 x^2) / 25 * prog_noise_scale
                         (the active cell of the differential pair at x, the other at 0)
    preset with variation (relative sigma): W~ = W + sigma * |W| * N;
                         (absolute sigma):  W~ = W + sqrt(2) * sigma * w_max * N

(both noises add when both are given). Noise is applied only where ``W != 0``: pruned weights
are not programmed, and the mask, kept by the training loop, leaves them exactly zero.
With ``io`` (or a preset that has one) the layer's output goes through
:func:`~xbarprune.hardware.nonideal.io.io_mvm` (noise management, DAC, output noise, ADC,
bound management) with straight-through rounding gradients.

A preset without a programming model (no ``pcm`` and no ``variation``) is an error, not a
silent no-op, as is a named layer that is not a Conv2d/Linear of the model.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xbarprune.errors import ConfigError, SpecError, check_range
from xbarprune.hardware.nonideal.io import IOConfig, io_mvm, manage_input
from xbarprune.hardware.nonideal.model import NonIdealityConfig, preset
from xbarprune.hardware.nonideal.pcm import pcm_prog_sigma
from xbarprune.units import parse_time


@dataclass(frozen=True)
class HWAConfig:
    """Hardware-aware training (module docstring).

    Attributes:
        weight_noise: std of the additive weight noise relative to the layer's ``w_max``
            (Joshi et al. 2020 use 3.8 % for ResNets on PCM); 0 = none.
        preset: a non-ideality preset whose programming model (``pcm`` or ``variation``)
            gives the weight noise, and whose ``io`` (if any) the forward's periphery.
        io: the peripheral I/O model to train through (overrides the preset's).
        layers: the layers to perturb (default: every Conv2d/Linear).
        select_weight_noise: candidate ``weight_noise`` values (>= 2) chosen among on the
            validation split: the fine-tune runs once per candidate from the same model and
            seed, each result is measured under ``preset`` at ``select_time`` with
            ``select_trials`` Monte Carlo chips (chip seeds disjoint from the final
            measurement's), and the best mean validation accuracy is kept (ties: the first
            candidate). Needs ``preset`` and excludes ``weight_noise``. The test split is
            never read (issue #17: "a noise level chosen on validation").
        select_time: the evaluation time of the selection (e.g. ``1y``).
        select_trials: Monte Carlo chips per candidate (>= 1).
    """

    weight_noise: float = 0.0
    preset: str | None = None
    io: IOConfig | None = None
    layers: tuple[str, ...] = ()
    select_weight_noise: tuple[float, ...] = ()
    select_time: str = "1y"
    select_trials: int = 3

    def __post_init__(self) -> None:
        check_range("hwa.weight_noise", self.weight_noise, low=0.0)
        if self.select_weight_noise:
            for i, c in enumerate(self.select_weight_noise):
                check_range(f"hwa.select_weight_noise[{i}]", c, low=0.0)
            if len(self.select_weight_noise) < 2:
                raise SpecError(
                    "hwa.select_weight_noise: give >= 2 candidates (one value is hwa.weight_noise)"
                )
            if self.weight_noise > 0:
                raise SpecError(
                    "hwa.weight_noise and hwa.select_weight_noise: give one (the selection "
                    "sets weight_noise)"
                )
            if self.preset is None:
                raise SpecError(
                    "hwa.select_weight_noise needs hwa.preset: the non-ideality the "
                    "candidates are measured under on the validation split"
                )
            parse_time(self.select_time)  # raises naming the value and the units
            if isinstance(self.select_trials, bool) or not isinstance(self.select_trials, int) \
                    or self.select_trials < 1:  # fmt: skip
                raise SpecError(
                    f"hwa.select_trials = {self.select_trials!r}; allowed: an integer >= 1"
                )
        if self.preset is not None:
            cfg = preset(self.preset)  # unknown names raise, listing the known ones
            if cfg.pcm is None and cfg.variation is None:
                raise SpecError(
                    f"hwa.preset = {self.preset!r} has no programming model (no pcm, no "
                    "variation section) to draw training noise from; choose a preset with "
                    "one (e.g. 'pcm', 'aihwkit-default', 'reram') or set hwa.weight_noise"
                )
        if self.weight_noise == 0 and self.preset is None and self.io is None:
            raise SpecError(
                "hwa: nothing to inject; set weight_noise > 0, a preset with a programming "
                "model, or io"
            )

    @property
    def nonideal(self) -> NonIdealityConfig | None:
        return None if self.preset is None else preset(self.preset)

    @property
    def periphery(self) -> IOConfig | None:
        if self.io is not None:
            return self.io
        cfg = self.nonideal
        return None if cfg is None else cfg.io


def weight_noise_std(w: Tensor, cfg: HWAConfig) -> Tensor:
    """Per-weight std of the training noise (module docstring), zero where ``w == 0``."""
    w = w.detach()
    w_max = w.abs().max()
    var = torch.zeros_like(w)
    if cfg.weight_noise > 0:
        var = var + (cfg.weight_noise * w_max) ** 2
    ni = cfg.nonideal
    if ni is not None and ni.pcm is not None:
        x = (w.abs() / w_max.clamp(min=1e-12)).clamp(max=1.0)
        coeff = tuple(ni.pcm.prog_coeff)
        s = pcm_prog_sigma(x, coeff) * ni.pcm.prog_noise_scale
        s0 = pcm_prog_sigma(torch.zeros_like(x), coeff) * ni.pcm.prog_noise_scale
        var = var + (w_max**2) * (s**2 + s0**2)
    if ni is not None and ni.variation is not None:
        sig = ni.variation.sigma
        if ni.variation.mode == "absolute":
            var = var + 2 * (sig * w_max) ** 2
        else:  # relative / lognormal (to first order)
            var = var + (sig * w.abs()) ** 2
    return var.sqrt() * (w != 0)


def _targets(model: nn.Module, cfg: HWAConfig) -> dict[str, nn.Conv2d | nn.Linear]:
    mods = dict(model.named_modules())
    if not cfg.layers:
        return {n: m for n, m in mods.items() if isinstance(m, nn.Conv2d | nn.Linear)}
    out: dict[str, nn.Conv2d | nn.Linear] = {}
    for n in cfg.layers:
        m = mods.get(n)
        if not isinstance(m, nn.Conv2d | nn.Linear):
            kind = "not in the model" if m is None else f"a {type(m).__name__}"
            raise ConfigError(
                f"hwa.layers: '{n}' is {kind}; HWA applies to mapped Conv2d/Linear layers only"
            )
        out[n] = m
    return out


def _forward(m: nn.Conv2d | nn.Linear, x: Tensor, w: Tensor, io: IOConfig | None, gen) -> Tensor:
    if io is None:
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w, m.bias)
    mat = w.reshape(w.shape[0], -1).t()  # (R, C): the mapped matrix
    if isinstance(m, nn.Conv2d):
        if m.groups != 1:
            raise ConfigError("hwa.io: grouped convolutions are not supported")
        pad = m.padding
        if isinstance(pad, str):
            raise ConfigError(f"hwa.io: padding={pad!r} is not supported; give integer padding")
        B, _, H, W_ = x.shape
        cols = F.unfold(x, m.kernel_size, m.dilation, pad, m.stride)
        # the patches hold the (zero-padded) input's values: on a non-negative input (after
        # a ReLU) the abs-max is the max, one reduction instead of two (the same numbers)
        nonneg = io.noise_management == "abs_max" and bool(x.detach().amin() >= 0)
        s = manage_input(cols, io, 1, nonneg=True) if nonneg else None
        y = io_mvm(cols, mat, io, gen, dim=1, scale=s)
        ho = (H + 2 * pad[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0]
        wo = (W_ + 2 * pad[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[1]
        y = y.view(B, -1, ho + 1, wo + 1)
        return y if m.bias is None else y + m.bias.view(1, -1, 1, 1)
    y = io_mvm(x, mat, io, gen)
    return y if m.bias is None else y + m.bias


def install_hwa(model: nn.Module, cfg: HWAConfig, seed: int = 0) -> Callable[[], None]:
    """Make every target layer of ``model`` train through the HWA forward; returns the
    function that restores the plain forwards. In eval mode the layers compute as before.
    All noise comes from one generator seeded with ``seed`` (on the weights' device)."""
    targets = _targets(model, cfg)
    io = cfg.periphery
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(int(seed) * 1_000_003 + 17)
    ni = cfg.nonideal
    noisy = cfg.weight_noise > 0 or (
        ni is not None and (ni.pcm is not None or ni.variation is not None)
    )
    originals: dict[str, Any] = {}
    for name, m in targets.items():
        originals[name] = m.__dict__.get("forward")

        def fwd(self: nn.Module, x: Tensor) -> Tensor:
            if not self.training:
                return type(self).forward(self, x)
            layer = cast("nn.Conv2d | nn.Linear", self)  # only such layers are targets
            w = layer.weight
            if noisy:
                std = weight_noise_std(w, cfg)
                w = w + std * torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
            return _forward(layer, x, w, io, gen)

        # an instance attribute shadows the class's forward (restored below)
        m.__dict__["forward"] = types.MethodType(fwd, m)

    def restore() -> None:
        for name, m in targets.items():
            if originals[name] is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = originals[name]

    return restore


def check_unmapped(cfg: HWAConfig, mapped: set[str]) -> None:
    """Raise :class:`ConfigError` if ``cfg.layers`` names a layer outside ``mapped``."""
    bad = [n for n in cfg.layers if n not in mapped]
    if bad:
        raise ConfigError(
            f"hwa.layers: {', '.join(bad)} not mapped onto crossbars; mapped: "
            f"{', '.join(sorted(mapped)) or 'none'}"
        )
