"""BatchNorm re-calibration on the programmed chip (Bhattacharjee et al., GLSVLSI 2023,
arXiv 2305.18416, Sec. 2.2 and 4).

The crossbars' non-idealities shift and distort the pre-activations ``x_j`` that a digital
BatchNorm layer after an analog layer sees. With every crossbar weight frozen as programmed
(one Monte Carlo trial = one chip), two nearly training-free corrections act on the digital
BatchNorm layers only:

* ``adapt`` (BN adaptation): the running mean and variance of every BatchNorm layer are
  re-estimated from training images forwarded through the non-ideal model (all other
  parameters frozen);
* ``finetune`` (BN fine-tuning): adaptation, then the affine parameters ``gamma`` and ``beta``
  (only those) are trained by cross-entropy through the non-ideal model; the paper trains them
  for 5 epochs with an initial learning rate of 0.01 divided by 5 every second epoch.

Choices that are ours (the paper gives none): SGD with momentum 0.9 (the paper names no
optimiser); ``samples`` training images per epoch (the paper uses the whole training set:
a CPU budget, set ``samples`` to the training-set size for the paper's setting), drawn per
trial with a generator seeded from the trial; adaptation uses cumulative averages over
``samples`` images (``momentum=None``) rather than an exponential average; the DAC/ADC full
scales are re-calibrated after the BatchNorm change, as on a freshly programmed chip; the
rounding of converters passes gradients straight through (within range) during fine-tuning.
Each trial starts from the pre-trained BatchNorm state (a new chip); the BatchNorm state is
restored after evaluation by :func:`xbarprune.analog.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from xbarprune.checks import check_choice, check_int, check_nonneg

BNMode = Literal["adapt", "finetune"]
BN_MODES: tuple[str, ...] = ("adapt", "finetune")


@dataclass(frozen=True)
class BNCalibrationConfig:
    """Settings of the BatchNorm re-calibration (see the module docstring).

    Attributes:
        mode: ``"adapt"`` (statistics only) or ``"finetune"`` (statistics, then gamma/beta).
        samples: training images per re-calibration pass (adapt) or per epoch (finetune).
        batch_size: images per forward pass.
        epochs: fine-tuning epochs (paper: 5).
        lr: initial fine-tuning learning rate (paper: 0.01).
        lr_step, lr_gamma: the learning rate is multiplied by ``lr_gamma`` every ``lr_step``
            epochs (paper: divided by 5 every second epoch).
        momentum: SGD momentum (ours).
    """

    mode: BNMode = "adapt"
    samples: int = 2000
    batch_size: int = 100
    epochs: int = 5
    lr: float = 0.01
    lr_step: int = 2
    lr_gamma: float = 0.2
    momentum: float = 0.9

    def __post_init__(self) -> None:
        check_choice("bn_calibration.mode", self.mode, BN_MODES)
        check_int("bn_calibration.samples", self.samples, low=1)
        check_int("bn_calibration.batch_size", self.batch_size, low=1)
        check_int("bn_calibration.epochs", self.epochs, low=0)
        check_nonneg("bn_calibration.lr", self.lr)
        check_int("bn_calibration.lr_step", self.lr_step, low=1)
        check_nonneg("bn_calibration.lr_gamma", self.lr_gamma)
        check_nonneg("bn_calibration.momentum", self.momentum)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (in module order)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters and buffers of every BatchNorm layer (to restore later)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for k, v in m.state_dict().items():
                out[f"{name}.{k}"] = v.detach().clone()
    return out


def restore_batchnorm(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put back a :func:`batchnorm_state` snapshot in place."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for key, v in state.items():
            name, k = key.rsplit(".", 1)
            t = getattr(mods[name], k)
            t.copy_(v)


class BNCalibration:
    """BatchNorm re-calibration of a programmed analog model on ``train_data``.

    ``apply(model, trial)`` runs the configured correction for one Monte Carlo trial (the
    images are drawn with a generator seeded by ``seed`` and ``trial``); it changes only the
    BatchNorm layers of ``model`` and leaves the model in eval mode.
    """

    def __init__(
        self,
        cfg: BNCalibrationConfig,
        train_data: Dataset,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.cfg, self.data, self.seed, self.device = cfg, train_data, int(seed), device

    def _loader(self, trial: int, epoch: int) -> DataLoader:
        # torch's Dataset declares no __len__; map-style training sets have one
        n = len(self.data)  # type: ignore[arg-type]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + trial * 7919 + epoch)
        idx = torch.randperm(n, generator=g)[: min(self.cfg.samples, n)].tolist()
        return DataLoader(Subset(self.data, idx), batch_size=self.cfg.batch_size, shuffle=False)

    def apply(self, model: nn.Module, trial: int) -> None:
        bns = batchnorm_layers(model)
        if not bns:
            return
        model.eval()
        self._adapt(model, bns, trial)
        if self.cfg.mode == "finetune" and self.cfg.epochs > 0:
            self._finetune(model, bns, trial)
        model.eval()
        reset = getattr(model, "reset_calibration", None)
        if reset is not None:
            reset()  # converters re-calibrate on the next forward, as after programming

    @torch.no_grad()
    def _adapt(self, model: nn.Module, bns: list, trial: int) -> None:
        moms = [b.momentum for b in bns]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None  # cumulative average over the pass
            b.train()
        try:
            for x, _ in self._loader(trial, 0):
                model(x.to(self.device))
        finally:
            for b, mom in zip(bns, moms, strict=True):
                b.momentum = mom
                b.eval()

    def _finetune(self, model: nn.Module, bns: list, trial: int) -> None:
        cfg = self.cfg
        params = [p for b in bns for p in (b.weight, b.bias) if p is not None]
        if not params:
            return
        flags = {id(p): p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
        try:
            with torch.enable_grad():
                for epoch in range(cfg.epochs):
                    for grp in opt.param_groups:
                        grp["lr"] = cfg.lr * cfg.lr_gamma ** (epoch // cfg.lr_step)
                    for b in bns:
                        b.train()
                    for x, y in self._loader(trial, epoch + 1):
                        out = model(x.to(self.device))
                        loss = F.cross_entropy(out, y.to(self.device))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    for b in bns:
                        b.eval()
        finally:
            for p in model.parameters():
                p.requires_grad_(flags.get(id(p), True))
            for p in params:
                p.grad = None
