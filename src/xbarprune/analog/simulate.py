"""Model conversion and Monte Carlo evaluation on non-ideal crossbars (DESIGN.md `analog/`).

``convert(model, layout, device, nonideal)`` returns a copy of the model in which every layer of
the layout is an :class:`AnalogLayer`; ``evaluate(...)`` programs it once per Monte Carlo trial
(trial ``i`` draws from a generator seeded with ``seed * 1_000_003 + i``) and reports the test
accuracy of every trial, their mean and (sample) standard deviation. The same seed gives the
same numbers; ideal settings give the digital accuracy.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from xbarprune.analog.batchnorm import BNCalibration, batchnorm_state, restore_batchnorm
from xbarprune.analog.layers import AnalogLayer
from xbarprune.hardware.nonideal.model import NonIdealityModel
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.mapping.layout import CrossbarLayout
from xbarprune.metrics import accuracy


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent = root
    parts = name.split(".")
    for p in parts[:-1]:
        parent = getattr(parent, p)
    setattr(parent, parts[-1], new)


class AnalogModel(nn.Module):
    """A model whose mapped layers run through simulated crossbars."""

    def __init__(self, model: nn.Module, layers: dict[str, AnalogLayer]):
        super().__init__()
        self.model = model
        self._names = list(layers)

    def analog_layers(self) -> list[AnalogLayer]:
        mods = dict(self.model.named_modules())
        return [mods[n] for n in self._names]

    @torch.no_grad()
    def program(self, generator: torch.Generator, time_s: float = 1.0) -> None:
        """Program every analog layer (one Monte Carlo trial) at ``time_s`` after programming."""
        for layer in self.analog_layers():
            layer.program(generator, time_s)

    def reset_calibration(self) -> None:
        for layer in self.analog_layers():
            layer.reset_calibration()

    @property
    def needs_calibration(self) -> bool:
        return any(layer.needs_calibration for layer in self.analog_layers())

    @torch.no_grad()
    def calibrate(self, x: Tensor, *, ideal: bool = True) -> None:
        """Fit every converter's full scale (DAC input range, ADC range) on the batch ``x``.

        ``ideal=True`` (design time): on the chip programmed without any non-ideality, so the
        full scales are a function of the weights and ``x`` alone and every trial and time uses
        the same converters; the layers are left ideally programmed (call :meth:`program`
        next). ``ideal=False``: on the chip as currently programmed (e.g. after a per-chip
        BatchNorm re-calibration changed the activations), a function of that chip's
        (trial, time).
        """
        self.reset_calibration()
        if ideal:
            for layer in self.analog_layers():
                layer.program(None, ideal=True)
        self.model(x)

    def can_batch_trials(self) -> bool:
        """Whether :meth:`program_trials` applies: every layer on the weight-level path
        (no per-tile ADC) and no read stage (read noise is drawn anew at every forward)."""
        return all(
            not layer.tile_mode and not layer.nonideal.has_read_stage
            for layer in self.analog_layers()
        )

    @torch.no_grad()
    def program_trials(self, generators: Sequence[torch.Generator], time_s: float = 1.0) -> None:
        """Program K trials at once (one generator each, programmed in turn exactly as K
        :meth:`program` calls would be) and stack their effective weights, so that a forward
        pass on the trial-interleaved batch (row ``b*K + t``: sample ``b`` of trial ``t``; see
        :func:`xbarprune.analog.kernels.trials_forward`) evaluates all K in one pass. A later
        :meth:`program` call returns to single-trial mode."""
        if not self.can_batch_trials():
            raise RuntimeError("batched trials need the weight-level path without read noise")
        layers = self.analog_layers()
        stacks: list[list[Tensor]] = [[] for _ in layers]
        for g in generators:
            self.program(g, time_s)
            for st, layer in zip(stacks, layers, strict=True):
                assert layer._w_eff is not None  # can_batch_trials: the weight-level path
                st.append(layer._w_eff)
        for st, layer in zip(stacks, layers, strict=True):
            layer._trial_w = torch.stack(st)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def convert(
    model: nn.Module,
    layout: CrossbarLayout,
    device: DeviceSpec,
    nonideal: NonIdealityModel,
    *,
    weight_clip: dict[str, float] | None = None,
) -> AnalogModel:
    """Deep-copy ``model`` and replace each layout layer by an :class:`AnalogLayer`."""
    m = copy.deepcopy(model)
    m.eval()
    mods = dict(m.named_modules())
    layers: dict[str, AnalogLayer] = {}
    for lay in layout:
        if lay.name not in mods:
            from xbarprune.errors import MappingError

            raise MappingError(f"layout layer '{lay.name}' is not in the model")
        clip = (weight_clip or {}).get(lay.name)
        al = AnalogLayer(mods[lay.name], lay, device, nonideal, weight_clip=clip)
        _set_module(m, lay.name, al)
        layers[lay.name] = al
    return AnalogModel(m, layers)


@dataclass
class EvalResult:
    """Accuracy of one analog evaluation: per trial, mean and sample std (0 for one trial)."""

    time_s: float
    per_trial: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_trial) if self.per_trial else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.per_trial) if len(self.per_trial) > 1 else 0.0

    def to_dict(self) -> dict:
        return {
            "time_s": self.time_s,
            "mean": self.mean,
            "std": self.std,
            "trials": len(self.per_trial),
            "per_trial": list(self.per_trial),
        }


def trial_generator(seed: int, trial: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(trial))


@torch.no_grad()
def accuracy_trials(model: nn.Module, data: Iterable, trials: int, device) -> list[float]:
    """Top-1 accuracy of each of ``trials`` batched trials (trial-interleaved batches, see
    :meth:`AnalogModel.program_trials`); the same counts as :func:`accuracy` per trial."""
    model.eval()
    correct = torch.zeros(trials, dtype=torch.long)
    total = 0
    for x, y in data:
        x, y = x.to(device), y.to(device)
        logits = model(x.repeat_interleave(trials, 0))
        pred = logits.view(x.shape[0], trials, -1).argmax(2)
        correct += (pred == y.view(-1, 1)).sum(0).cpu()
        total += int(y.numel())
    return [int(c) / max(total, 1) for c in correct]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Iterable,
    layout: CrossbarLayout,
    device_spec: DeviceSpec,
    nonideal: NonIdealityModel,
    *,
    trials: int = 10,
    seed: int = 0,
    times: Sequence[float] = (1.0,),
    device: torch.device | str | None = None,
    weight_clip: dict[str, float] | None = None,
    bn_calibration: BNCalibration | None = None,
    calibration: Tensor | None = None,
    batch_trials: int = 1,
) -> list[EvalResult]:
    """Monte Carlo accuracy of ``model`` on non-ideal crossbars, one result per time.

    For each time t and trial i the model is programmed with the generator of (seed, i), so
    the same devices (same variation, faults, drift exponents) are seen at every t: results
    across times are paired, as for one chip observed over time. When no effect depends on
    time, one pass per trial serves every t (the numbers are identical by construction).
    ``bn_calibration`` re-calibrates the BatchNorm layers on every programmed chip (trial and
    time), each time from the pre-trained BatchNorm state (:mod:`xbarprune.analog.batchnorm`).

    Converter full scales (DAC, ADC) are calibrated once, before the first trial, on the
    ideally programmed chip with the images ``calibration`` (default: the first batch of
    ``data``; the pipeline passes training images, so the test split is read only by the
    measurement), hence every (trial, time) result is the same whichever other trials and
    times are evaluated. With ``bn_calibration`` they are re-fitted on each re-calibrated chip,
    with the same images.

    ``batch_trials = K > 1`` evaluates K trials per forward pass (stacked weights, one grouped
    convolution / batched matmul per layer; :meth:`AnalogModel.program_trials`) where that
    applies (weight-level path, no read noise, no BatchNorm calibration; otherwise trials run
    one by one). The per-trial numbers are those of the sequential trials: the same seeds,
    the same programmed weights; only the float summation order of the layer products may
    differ (an argmax flips only on a tie within a few ulps). Memory grows K-fold.
    """
    from xbarprune.errors import ConfigError

    if not isinstance(batch_trials, int) or batch_trials < 1:
        raise ConfigError(f"batch_trials = {batch_trials!r}; allowed: an integer >= 1")
    if device is None:
        device = next(model.parameters()).device
    am = convert(model, layout, device_spec, nonideal, weight_clip=weight_clip).to(device)
    calib = None
    if am.needs_calibration:
        calib = calibration if calibration is not None else next(iter(data))[0]
        calib = calib.to(device)
        am.calibrate(calib)
    n_trials = 1 if nonideal.is_ideal else trials
    timeless = not nonideal.stage("time")  # no effect depends on t: one pass serves every t
    bn_state = batchnorm_state(am) if bn_calibration is not None else None
    out = [EvalResult(time_s=float(t)) for t in times]
    if batch_trials > 1 and bn_calibration is None and am.can_batch_trials() and n_trials > 1:
        for i0 in range(0, n_trials, batch_trials):
            group = range(i0, min(i0 + batch_trials, n_trials))
            for j, t in enumerate(times):
                if timeless and j > 0:
                    out[j].per_trial.extend(out[0].per_trial[-len(group) :])
                    continue
                gens = [trial_generator(seed, i, device) for i in group]
                am.program_trials(gens, time_s=float(t))
                out[j].per_trial.extend(accuracy_trials(am, data, len(group), device))
        return out
    for i in range(n_trials):
        for j, t in enumerate(times):
            if timeless and j > 0:
                out[j].per_trial.append(out[0].per_trial[-1])
                continue
            am.program(trial_generator(seed, i, device), time_s=float(t))
            if bn_calibration is not None and bn_state is not None:
                restore_batchnorm(am, bn_state)
                bn_calibration.apply(am, i)
                if calib is not None:
                    am.calibrate(calib, ideal=False)
            out[j].per_trial.append(accuracy(am, data, device))
    return out
