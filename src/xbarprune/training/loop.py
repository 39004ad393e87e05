"""A small, seeded, resumable training loop (SGD/Adam, cosine/step schedules).

Every epoch ends with an atomic checkpoint (model, optimizer, scheduler, history, epoch), so a
killed run loses at most the epoch in progress and ``train`` resumes from the checkpoint when
it finds one. The epoch's data order is drawn from ``seed + epoch``, so a resumed run sees the
same batches as an uninterrupted one. Hooks: a ``regularizer(model, progress) -> Tensor`` added
to the loss (progress = fraction of training done, for warm-up ramps), a :class:`MaskSet` kept
fixed (gradients and optimizer state masked, weights re-zeroed after every step), and a
``post_step(model)`` callable (e.g. weight clipping).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from xbarprune.errors import CheckpointError, SpecError, TrainingError, check_range
from xbarprune.io import load_checkpoint, load_state_into, save_checkpoint
from xbarprune.metrics import accuracy
from xbarprune.training.hwa import HWAConfig, install_hwa
from xbarprune.training.masks import MaskSet

Regularizer = Callable[[nn.Module, float], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (the ``train:`` / ``finetune:`` config sections)."""

    epochs: int = 2
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    progress: bool = True
    hwa: HWAConfig | None = None  # hardware-aware training (training/hwa.py); None = off

    def __post_init__(self) -> None:
        check_range("train.epochs", self.epochs, low=0)
        check_range("train.batch_size", self.batch_size, low=1)
        check_range("train.lr", self.lr, low=0.0, low_open=True)
        check_range("train.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_range("train.weight_decay", self.weight_decay, low=0.0)
        check_range("train.step_size", self.step_size, low=1)
        check_range("train.gamma", self.gamma, low=0.0, low_open=True, high=1.0)
        if self.optimizer not in ("sgd", "adam"):
            raise SpecError(f"train.optimizer = {self.optimizer!r}; allowed: 'sgd', 'adam'")
        if self.schedule not in ("cosine", "step", "constant"):
            raise SpecError(
                f"train.schedule = {self.schedule!r}; allowed: 'cosine', 'step', 'constant'"
            )


@dataclass
class TrainHistory:
    epochs: list[dict] = field(default_factory=list)
    #: the recorded seconds of the epochs loaded from the checkpoint: compute an earlier,
    #: interrupted invocation did (0.0 for a training that ran every epoch here)
    resumed_s: float = 0.0

    @classmethod
    def resumed_from(cls, epochs: list[dict]) -> TrainHistory:
        """The history of a training resumed from a checkpoint holding ``epochs``: every one
        of them was run by an earlier invocation (``resumed_s``: their recorded seconds)."""
        return cls(list(epochs), sum(float(e.get("seconds", 0.0)) for e in epochs))

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def save_epoch_checkpoint(
    ckpt: Path,
    epoch: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    history: list[dict],
    owner: str | None = None,
    **extra,
) -> None:
    """Write a training's resume point after ``epoch`` atomically: the model, the optimizer
    (its momenta), the history so far, ``owner`` (what run it belongs to) if given, and the
    caller's ``extra`` state. :func:`load_epoch_checkpoint` reads it back."""
    d = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict()}
    d |= {"history": history, **({"owner": owner} if owner is not None else {}), **extra}
    save_checkpoint(ckpt, d)


def load_epoch_checkpoint(
    ckpt: Path | None,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    device: torch.device | str,
    owner: str | None = None,
    what: str = "training",
) -> tuple[int, TrainHistory, dict] | None:
    """Resume a training from :func:`save_epoch_checkpoint`'s file, if there is one: loads
    the model and the optimizer in place and returns (the epoch stored, the history of the
    epochs an earlier invocation ran, the whole checkpoint for the caller's own state). With
    ``owner``, a checkpoint of another run is refused, never mixed in."""
    if ckpt is None or not ckpt.is_file():
        return None
    ck = load_checkpoint(ckpt, map_location=device)
    if owner is not None and ck.get("owner") != owner:
        raise CheckpointError(
            f"checkpoint {ckpt} belongs to another {what} run (other parameters, seed or "
            "epochs); delete it to start this one afresh"
        )
    load_state_into(model, ck["model"], str(ckpt))
    opt.load_state_dict(ck["optimizer"])
    return int(ck["epoch"]), TrainHistory.resumed_from(ck.get("history", [])), ck


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, epoch: int, n_epochs: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(n_epochs, 1)))
    if cfg.schedule == "step":
        return cfg.gamma ** (epoch // cfg.step_size)
    return 1.0


evaluate_accuracy = accuracy  # the training-side name of the shared metric


def _loader(data: Dataset | DataLoader, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)


def train(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    val_data: Dataset | DataLoader | None = None,
    regularizer: Regularizer | None = None,
    masks: MaskSet | None = None,
    post_step: Callable[[nn.Module], None] | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    desc: str = "train",
    epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainHistory:
    """Train ``model`` in place for ``cfg.epochs`` (or ``epochs``) epochs; returns the history."""
    n_epochs = cfg.epochs if epochs is None else epochs
    model.to(device)
    opt = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]
    hist = TrainHistory()
    start = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    resumed = load_epoch_checkpoint(ckpt, model, opt, device, what=desc)
    if resumed is not None:  # epochs are 0-based here: the stored one is done
        start, hist = resumed[0] + 1, resumed[1]
    if masks is not None:
        masks.apply(model, opt)
    val_loader = _loader(val_data, 512, False, seed) if val_data is not None else None
    restore_hwa = install_hwa(model, cfg.hwa, seed + start) if cfg.hwa is not None else None
    show = cfg.progress and sys.stderr.isatty()
    for epoch in range(start, n_epochs):
        factor = _lr_factor(cfg, epoch, n_epochs)
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * factor
        loader = _loader(train_data, cfg.batch_size, True, seed * 7919 + epoch)
        model.train()
        t0 = time.perf_counter()
        tot_loss = tot_reg = 0.0
        correct = seen = 0
        steps = len(loader)
        it = loader
        if show:
            from tqdm import tqdm

            it = tqdm(loader, desc=f"{desc} {epoch + 1}/{n_epochs}", leave=False)
        for b, (x, y) in enumerate(it):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss = F.cross_entropy(out, y)
            total = loss
            if regularizer is not None:
                progress = (epoch + b / max(steps, 1)) / max(n_epochs, 1)
                r = regularizer(model, progress)
                total = loss + r
                tot_reg += float(r.detach()) * y.numel()
            if not torch.isfinite(total.detach()):
                raise TrainingError(
                    f"{desc}: the loss became {float(total.detach())} in epoch {epoch + 1} "
                    f"(batch {b + 1}); likely causes: a learning rate too high ({desc}.lr = "
                    f"{cfg.lr:g}), a regulariser weight too large, or non-finite inputs"
                )
            opt.zero_grad(set_to_none=True)
            total.backward()
            if masks is not None:
                masks.mask_grads(model)
            opt.step()
            if masks is not None:
                masks.apply(model, opt)
            if post_step is not None:
                post_step(model)
            tot_loss += float(loss.detach()) * y.numel()
            correct += int((out.argmax(1) == y).sum())
            seen += int(y.numel())
        rec = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "loss": tot_loss / max(seen, 1),
            "reg": tot_reg / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "seconds": time.perf_counter() - t0,
        }
        if val_loader is not None:
            rec["val_acc"] = evaluate_accuracy(model, val_loader, device)
        hist.epochs.append(rec)
        if log is not None:
            log(
                f"  {desc} epoch {epoch + 1}/{n_epochs}: loss {rec['loss']:.4f} "
                f"train {rec['train_acc']:.4f}"
                + (f" val {rec['val_acc']:.4f}" if "val_acc" in rec else "")
                + f" ({rec['seconds']:.1f} s)"
            )
        if ckpt is not None:
            save_epoch_checkpoint(ckpt, epoch, model, opt, hist.epochs)
    if restore_hwa is not None:
        restore_hwa()
    return hist
