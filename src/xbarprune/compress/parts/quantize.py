"""Memristor weight quantisation (Ma et al., ASP-DAC 2020, Sec. 4.1, 5.2; Yuan et al., ISLPED
2019): the level set Q, its Euclidean projection, straight-through fake quantisation and the
distillation loss of eq. (10) / Algorithm 2.

**Level set.** A weight of layer i takes one of the zero-symmetric values ``±s_i·m_j`` with
``s_i`` the layer's scale (max |w| over its kept weights, the same ``w_max`` that
:func:`xbarprune.hardware.conductance.weight_scale` uses when mapping) and ``m_j`` the
normalised magnitudes. Zero is *not* a level: a zero weight exists only where the layer is
pruned (the cell pair is left unprogrammed), so the projection never maps a kept weight to zero.
Positive and negative weights sit on separate cells (the paper's positive and negative
crossbars; our differential pair). Two magnitude modes:

* ``uniform`` (default): ``m_j = j / (N - 1)``, j = 1..N-1, with ``N = L**k`` codes for ``L``
  device levels (16 = 4-bit cells) and ``k`` cells per weight (bit slicing: an 8-bit weight is
  two 4-bit cells, the LSB cell's current scaled by 1/16 digitally). This is exactly the grid
  :func:`~xbarprune.hardware.conductance.encode` represents with ``k`` cells of ``L`` levels,
  so a quantised model passes the analog simulator's quantisation unchanged.
* ``conductance``: eq. (2) read literally, ``q ∈ [-memr_max, -memr_min] ∪ [memr_min,
  memr_max]``: N magnitudes linear in conductance between ``g_min`` and ``g_max``, normalised by
  ``g_max`` (the smallest kept magnitude is ``s·g_min/g_max``, 0.1·s for the paper's 1 MΩ /
  10 MΩ device).

**Distillation** (eq. 10): ``l = (1 - σ)·CE(p_s, y) + σ·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``
(Hinton et al. 2015; KL averaged over the batch). The student runs with fake-quantised weights
(forward: nearest level; backward: identity, the straight-through estimator) and a fixed
pruning mask; the latent float weights are updated, then hard-projected at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader

from xbarprune.errors import CompressionError, check_range
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.training.loop import TrainConfig, make_optimizer
from xbarprune.training.masks import MaskSet

LevelMode = Literal["uniform", "conductance"]


@dataclass(frozen=True)
class LevelSet:
    """Normalised non-zero magnitudes ``m`` (ascending, in (0, 1], last = 1) of a zero-symmetric
    level set ``{±s·m_j}``; ``len()`` is the number of levels (2 per magnitude)."""

    magnitudes: Tensor
    mode: str = "uniform"
    codes: int = 0  # N, the number of magnitude codes per sign incl. the unused zero code

    def __post_init__(self) -> None:
        m = self.magnitudes
        if m.dim() != 1 or m.numel() < 1:
            raise CompressionError(
                f"a level set needs at least 2 levels (one magnitude, ±); got {m.numel() * 2}"
            )
        if bool((m <= 0).any()) or bool((m[1:] <= m[:-1]).any()):
            raise CompressionError("level magnitudes must be positive and strictly increasing")

    def __len__(self) -> int:
        return 2 * self.magnitudes.numel()

    def levels(self, scale: float = 1.0) -> Tensor:
        """All levels for a scale, ascending (negative then positive), shape (len(self),)."""
        m = self.magnitudes * scale
        return torch.cat([-m.flip(0), m])

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "codes": self.codes,
            "levels": len(self),
            "min_magnitude": float(self.magnitudes[0]),
        }


def memristor_levels(
    device: DeviceSpec,
    cells_per_weight: int = 1,
    *,
    bits: int | None = None,
    mode: LevelMode = "uniform",
    layer: str | None = None,
) -> LevelSet:
    """The level set of a weight stored on ``cells_per_weight`` cells of ``device``.

    ``N = device.levels ** cells_per_weight`` magnitude codes (``2**bits`` if ``bits`` is
    given). ``uniform``: magnitudes ``j/(N-1)``, j = 1..N-1 (the zero code is reserved for pruned
    weights). ``conductance``: N magnitudes ``(g_min + q/(N-1)·(g_max-g_min)) / g_max``,
    q = 0..N-1 (eq. 2). Fewer than 2 levels raises :class:`CompressionError` naming ``layer``.
    """
    where = f"layer '{layer}': " if layer else ""
    if bits is not None:
        if int(bits) != bits or bits < 1:
            raise CompressionError(f"{where}bits = {bits!r}; a level set needs bits >= 1")
        n = 2 ** int(bits)
    else:
        if int(cells_per_weight) != cells_per_weight or cells_per_weight < 1:
            raise CompressionError(f"{where}cells_per_weight = {cells_per_weight!r}; need >= 1")
        n = int(device.levels) ** int(cells_per_weight)
    if mode == "uniform":
        if n < 2:
            raise CompressionError(f"{where}{n} code(s) give fewer than 2 non-zero levels")
        mags = torch.arange(1, n, dtype=torch.float64) / (n - 1)
    elif mode == "conductance":
        if n < 1:
            raise CompressionError(f"{where}no conductance level")
        q = torch.arange(n, dtype=torch.float64)
        g = device.g_min + q / max(n - 1, 1) * (device.g_max - device.g_min)
        mags = g / device.g_max
    else:
        raise CompressionError(f"level mode {mode!r}; allowed: 'uniform', 'conductance'")
    return LevelSet(mags.float(), mode=mode, codes=n)


def layer_scale(x: Tensor, mask: Tensor | None = None) -> float:
    """The level-set scale s: max |x| over kept entries (1.0 when there is none / all zero)."""
    v = x.detach().abs()
    if mask is not None:
        v = v[mask.to(v.device)]
    m = float(v.max()) if v.numel() else 0.0
    return m if m > 0 else 1.0


def project_levels(
    x: Tensor,
    level_set: LevelSet,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    layer: str = "?",
) -> Tensor:
    """Euclidean projection onto Q: every kept entry to the nearest non-zero level, pruned
    entries (``mask`` False; default: ``x == 0``) to zero.

    A kept entry is never zeroed: ``|x|`` below the smallest level goes to the smallest level
    (an exact 0 goes to ``+s·m_1``). Ties between two levels go to the smaller magnitude.
    ``scale`` defaults to :func:`layer_scale` of the kept entries. No gradient.
    """
    if len(level_set) < 2:  # pragma: no cover - LevelSet already refuses this
        raise CompressionError(f"layer '{layer}': a level set needs at least 2 levels")
    x = x.detach()
    keep = (x != 0) if mask is None else mask.to(x.device).bool()
    if keep.shape != x.shape:
        raise CompressionError(
            f"layer '{layer}': mask shape {tuple(keep.shape)} != weight shape {tuple(x.shape)}"
        )
    s = layer_scale(x, keep) if scale is None else float(scale)
    mags = level_set.magnitudes.to(device=x.device, dtype=x.dtype)
    mid = (mags[1:] + mags[:-1]) / 2
    u = (x.abs() / s).contiguous()
    q = mags[torch.bucketize(u, mid)] * s
    sign = torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))
    return torch.where(keep, sign * q, torch.zeros_like(x))


def ste_quantize(w: Tensor, level_set: LevelSet, mask: Tensor) -> Tensor:
    """Fake quantisation with the straight-through estimator: forward = ``project_levels(w)``,
    backward = identity on kept weights, zero on pruned ones."""
    q = project_levels(w, level_set, mask)
    m = mask.to(w.device, w.dtype)
    return w * m + (q - w * m).detach()


def on_levels(
    w: Tensor, level_set: LevelSet, mask: Tensor | None = None, tol: float = 1e-6
) -> bool:
    """True when every kept entry is on a level (relative tolerance) and no kept entry is 0."""
    keep = (w != 0) if mask is None else mask.bool()
    q = project_levels(w, level_set, keep)
    s = layer_scale(w, keep)
    return bool(((w - q).abs() <= tol * s).all()) and bool((w[keep] != 0).all())


class LevelProjector:
    """``post_step(model)`` callable: hard-projects the named layers onto their level sets (keeps
    pruned zeros; the mask is the current support unless given). Usable with the training loop
    to enforce the levels after every optimizer step ("masked retraining with levels enforced").
    Note that with fine level sets an optimizer step smaller than half a level is undone by the
    projection; :func:`distill_quantize` (STE) is the default way to train on the levels.
    """

    def __init__(self, level_sets: Mapping[str, LevelSet], masks: MaskSet | None = None):
        self.level_sets = dict(level_sets)
        self.masks = masks

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        mods = dict(model.named_modules())
        for name, ls in self.level_sets.items():
            w = mods[name].weight
            mask = self.masks[name] if self.masks is not None and name in self.masks else None
            w.copy_(project_levels(w, ls, mask, layer=name))


def quantize_model(
    model: nn.Module, level_sets: Mapping[str, LevelSet], masks: MaskSet | None = None
) -> None:
    """Hard projection of every named layer onto its level set (in place)."""
    LevelProjector(level_sets, masks)(model)


def distillation_loss(
    student_logits: Tensor,
    target: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    sigma: float = 0.5,
    temperature: float = 4.0,
) -> Tensor:
    """Eq. (10): ``(1 - σ)·CE(z_s, y) + σ·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``.

    Without a teacher it is the plain cross-entropy. KL is averaged over the batch
    (``batchmean``), the T² factor keeps its gradient scale independent of T.
    """
    check_range("sigma", sigma, low=0.0, high=1.0)
    check_range("temperature", temperature, low=0.0, low_open=True)
    ce = F.cross_entropy(student_logits, target)
    if teacher_logits is None or sigma == 0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - sigma) * ce + sigma * t * t * kl


def distill_quantize(
    student: nn.Module,
    train_data,
    level_sets: Mapping[str, LevelSet],
    masks: MaskSet,
    cfg: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    epochs: int = 1,
    sigma: float = 0.5,
    temperature: float = 4.0,
    device: torch.device | str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Algorithm 2 (distillation quantisation): train ``student`` with fake-quantised weights
    (STE, ``masks`` fixed) on eq. (10) against ``teacher`` (plain CE when None), then
    hard-project the latent weights onto the levels. Returns per-epoch records.

    Layers without a level set stay in float; masks of layers without a level set are still
    enforced. Optimizer and schedule from ``cfg`` (its ``epochs`` is replaced by ``epochs``).
    """
    check_range("epochs", epochs, low=0)
    student.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    mods = dict(student.named_modules())
    missing = [n for n in level_sets if n not in mods]
    if missing:
        raise CompressionError(f"no layer(s) {', '.join(missing)} in the model to quantise")
    for n in level_sets:
        if n not in masks:
            masks[n] = mods[n].weight.detach() != 0
    masks.apply(student)
    opt = make_optimizer(student, cfg)
    base = [g["lr"] for g in opt.param_groups]
    hist: list[dict] = []
    for epoch in range(epochs):
        f = (
            0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
            if cfg.schedule == "cosine"
            else 1.0
        )
        for g, lr in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr * f
        gen = torch.Generator().manual_seed(seed * 7919 + epoch)
        loader = (
            train_data
            if isinstance(train_data, DataLoader)
            else DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, generator=gen)
        )
        student.train()
        t0 = time.perf_counter()
        tot = correct = seen = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            params = {
                f"{n}.weight": ste_quantize(mods[n].weight, ls, masks[n])
                for n, ls in level_sets.items()
            }
            out = functional_call(student, params, (x,), strict=False)
            t_out = None
            if teacher is not None and sigma > 0:
                with torch.no_grad():
                    t_out = teacher(x)
            loss = distillation_loss(out, y, t_out, sigma=sigma, temperature=temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            masks.mask_grads(student)
            opt.step()
            masks.apply(student, opt)
            tot += float(loss.detach()) * y.numel()
            correct += int((out.argmax(1) == y).sum())
            seen += int(y.numel())
        rec = {
            "epoch": epoch + 1,
            "loss": tot / max(seen, 1),
            "train_acc_quantised": correct / max(seen, 1),
            "seconds": time.perf_counter() - t0,
        }
        hist.append(rec)
        if log is not None:
            log(
                f"  distill-quant epoch {epoch + 1}/{epochs}: loss {rec['loss']:.4f} "
                f"train(q) {rec['train_acc_quantised']:.4f} ({rec['seconds']:.1f} s)"
            )
    quantize_model(student, level_sets, masks)
    return hist
