"""Peripheral I/O of an analog matrix-vector multiplication (MVM): aihwkit's ``IOParameters``.

A re-implementation from aihwkit 1.1's documented semantics (``aihwkit.simulator.parameters.io.
IOParameters``, the torch tile's ``AnalogMVM``; Rasch et al., "Hardware-aware training for
large-scale and diverse deep learning inference workloads using in-memory computing-based
accelerators", Nat. Commun. 14, 5282, 2023, Methods "Analog MVM model"). Field names are
aihwkit's, so that an aihwkit ``rpu_config.forward`` maps onto :class:`IOConfig` one to one.

One MVM of an input vector ``x`` (one row of ``x``; a conv patch for convolutions) through a
tile holding the weights ``W`` (``in x out``; in the tile's units, see ``weight_scaling_omega``)
is, with ``N(0, 1)`` draws from the layer's read generator::

    s      = max_i |x_i|                  noise_management "abs_max" (1 if s == 0; capped at
                                           nm_thres if > 0); 1 for "none"
    r      = 1, 2, 4, ...                 bound-management reduction (round k: r = 2**(k-1))
    u      = x / (s r)
    u_q    = clip(step_in round(u / step_in), -inp_bound, inp_bound) + inp_noise N
             step_in = res(inp_res) * 2 inp_bound          (DAC; skipped if inp_res is None)
    v      = u_q W + out_noise N                           (additive output noise)
    v_q    = clip(step_out round(v / step_out), -out_bound, out_bound)
             step_out = res(out_res) * 2 out_bound         (ADC; skipped if out_res is None)
    y      = v_q s r

``res(r) = 1 / r`` if ``r > 1`` (a number of steps) else ``r`` (a resolution), as aihwkit. So
the default ``inp_res = 1/126`` is a 7-bit signed DAC (63 steps per side of ``inp_bound``) and
``out_res = 1/510`` a 9-bit ADC (255 steps per side of ``out_bound = 12``); ``out_noise =
0.06`` is in the units of ``v``, i.e. 0.5 % of the ADC full scale ``out_bound``.

Iterative bound management (``bound_management: iterative``): a vector whose ``v_q`` clips
(``|v_q| > out_bound`` before the clip) is computed again with ``r`` doubled (fresh noise),
until it does not clip or ``r > max_bm_factor`` or ``r > max_bm_res / step_in`` (the last
round's output is kept, clipped). aihwkit's torch tile tests the whole batch at once (one
clipping vector re-scales every vector of the batch); we test each vector on its own, as
RPUCuda's per-vector forward does, so that a vector's result never depends on the rest of
its batch (identical when nothing clips, the usual case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal._checks import (
    check_choice,
    check_int,
    check_nonneg,
    check_positive,
)

NoiseManagement = Literal["abs_max", "none"]
BoundManagement = Literal["iterative", "none"]
NOISE_MANAGEMENT: tuple[str, ...] = ("abs_max", "none")
BOUND_MANAGEMENT: tuple[str, ...] = ("iterative", "none")


@dataclass(frozen=True)
class IOConfig:
    """Peripheral I/O of every analog MVM; defaults are aihwkit 1.1's ``IOParameters()``.

    Attributes (aihwkit name in brackets, where it differs only in spelling):
        inp_res: DAC resolution [``inp_res``]: ``1/steps`` (<= 1) or ``steps`` (> 1) over the
            range ``[-inp_bound, inp_bound]``; ``None`` = infinite resolution (aihwkit: <= 0).
        inp_bound: DAC input range [``inp_bound``]; inputs beyond clip (> 0).
        inp_noise: std of Gaussian noise added to the DAC output [``inp_noise``] (>= 0).
        out_res: ADC resolution [``out_res``], as ``inp_res`` over ``[-out_bound, out_bound]``.
        out_bound: ADC range [``out_bound``]; outputs beyond clip (> 0; ``None`` = no bound,
            aihwkit: <= 0).
        out_noise: std of the additive Gaussian output noise [``out_noise``] (>= 0), in the
            units of the tile output ``v`` (so ``out_noise / out_bound`` of the ADC full scale).
        noise_management: ``abs_max`` (each input vector divided by its abs-max before the
            DAC, the output multiplied back) or ``none`` [``NoiseManagementType.ABS_MAX``,
            ``NONE``].
        nm_thres: cap of the abs-max scale when > 0 [``nm_thres``] (>= 0).
        bound_management: ``iterative`` or ``none`` [``BoundManagementType.ITERATIVE``,
            ``NONE``].
        max_bm_factor: largest bound-management reduction [``max_bm_factor``] (>= 1).
        max_bm_res: bound management stops when ``r`` exceeds ``max_bm_res / step_in``
            [``max_bm_res``] (> 0).
        weight_scaling_omega: [``mapping.weight_scaling_omega``] 0 = the tile holds the
            layer's weights as they are (aihwkit's default); > 0 = weights scaled so that the
            layer's ``w_max`` maps to ``omega`` and the output scaled back digitally.
        max_input_size: [``mapping.max_input_size``] on the weight-level path a layer with
            more inputs is split into ``ceil(in / max_input_size)`` near-equal consecutive
            chunks, each an aihwkit tile with its own periphery and drift compensation, summed
            digitally (0 = never split).
        per_tile: ours: with ``True`` the per-tile path applies the periphery to every
            physical tile row band of the layout (``CrossbarSpec.rows`` inputs) and every
            cell slice, instead of the whole-layer (weight-level) MVM.
    """

    inp_res: float | None = 1 / (2**7 - 2)
    inp_bound: float = 1.0
    inp_noise: float = 0.0
    out_res: float | None = 1 / (2**9 - 2)
    out_bound: float | None = 12.0
    out_noise: float = 0.06
    noise_management: NoiseManagement = "abs_max"
    nm_thres: float = 0.0
    bound_management: BoundManagement = "iterative"
    max_bm_factor: int = 1000
    max_bm_res: float = 0.25
    weight_scaling_omega: float = 0.0
    max_input_size: int = 512
    per_tile: bool = False

    def __post_init__(self) -> None:
        for k in ("inp_res", "out_res", "out_bound"):
            if getattr(self, k) is not None:
                check_positive(f"io.{k}", getattr(self, k))
        check_positive("io.inp_bound", self.inp_bound)
        for k in ("inp_noise", "out_noise", "nm_thres", "weight_scaling_omega"):
            check_nonneg(f"io.{k}", getattr(self, k))
        check_choice("io.noise_management", self.noise_management, NOISE_MANAGEMENT)
        check_choice("io.bound_management", self.bound_management, BOUND_MANAGEMENT)
        check_int("io.max_bm_factor", self.max_bm_factor, low=1)
        check_positive("io.max_bm_res", self.max_bm_res)
        check_int("io.max_input_size", self.max_input_size, low=0)
        if not isinstance(self.per_tile, bool):
            raise SpecError(f"io.per_tile = {self.per_tile!r}; allowed: true, false")

    @property
    def inp_step(self) -> float | None:
        """DAC step ``res(inp_res) * 2 inp_bound`` (None: no DAC quantisation)."""
        return None if self.inp_res is None else resolution(self.inp_res) * 2 * self.inp_bound

    @property
    def out_step(self) -> float | None:
        """ADC step ``res(out_res) * 2 out_bound`` (None: no ADC quantisation; an ADC with a
        resolution but no bound has no defined step and is rejected)."""
        if self.out_res is None:
            return None
        if self.out_bound is None:
            raise SpecError("io.out_res needs io.out_bound (the ADC range); got out_bound None")
        return resolution(self.out_res) * 2 * self.out_bound


def resolution(res: float) -> float:
    """aihwkit's convention: ``res > 1`` is a number of steps (-> ``1/res``), else ``res``."""
    return 1.0 / res if res > 1.0 else float(res)


def quantize_step(x: Tensor, step: float) -> Tensor:
    """``step * round(x / step)`` (half to even); straight-through gradient when ``x``
    requires one (aihwkit ``UniformQuantize``; Bengio et al. 2013). A new tensor."""
    q = (x.detach() / step).round_().mul_(step)
    if x.requires_grad and torch.is_grad_enabled():
        return x + (q - x).detach()
    return q


def _absmax(x: Tensor, dim: int | tuple[int, ...], keepdim: bool = True) -> Tensor:
    # amax and amin are each much faster than aminmax or abs().amax() on CPU
    return torch.maximum(x.amax(dim, keepdim=keepdim), x.amin(dim, keepdim=keepdim).neg_())


def manage_input(
    x: Tensor, cfg: IOConfig, dim: int | tuple[int, ...] = -1, nonneg: bool = False
) -> Tensor:
    """Noise-management scale ``s`` of each vector (along ``dim``, one dim or several), kept
    as size-1 dims.

    ``abs_max``: ``max_i |x_i|`` (capped at ``nm_thres`` if > 0), 1 where it is 0; ``none``:
    ones. Inputs are divided by it before the DAC and outputs multiplied by it after the ADC.
    ``nonneg``: the caller knows ``x >= 0`` (e.g. tested once on a convolution's input before
    unfolding): the abs-max is then the max, one reduction instead of two (the same numbers).
    """
    shape = list(x.shape)
    for d in dim if isinstance(dim, tuple) else (dim,):
        shape[d] = 1
    if cfg.noise_management == "none":
        return torch.ones(shape, dtype=x.dtype, device=x.device)
    s = x.detach().amax(dim, keepdim=True) if nonneg else _absmax(x.detach(), dim)
    if cfg.nm_thres > 0:
        s = s.clamp_(max=cfg.nm_thres)
    return s.masked_fill_(s <= 0, 1.0)


def prepare_input(
    x: Tensor, scale: Tensor | float, cfg: IOConfig, gen: torch.Generator | None
) -> Tensor:
    """DAC of ``u = x / scale``: quantise to ``inp_step``, clip to ``+-inp_bound``, add
    ``inp_noise`` (aihwkit's ``_prepare_input`` order). ``scale`` broadcasts against ``x``.
    Gradients pass straight through the rounding (not through ``scale``)."""
    step = cfg.inp_step
    u = x / scale
    if step is not None:  # round(x / (scale step)) step, straight-through gradient
        q = torch.div(x.detach(), scale * step).round_().mul_(step)
        u = u + (q - u).detach() if u.requires_grad and torch.is_grad_enabled() else q
    u = u.clamp(-cfg.inp_bound, cfg.inp_bound)
    if cfg.inp_noise > 0:
        u = u + cfg.inp_noise * _randn(u, gen)
    return u


def output_noise_and_bound(
    v: Tensor, cfg: IOConfig, gen: torch.Generator | None, dim: int = -1
) -> tuple[Tensor, Tensor]:
    """Add ``out_noise``, digitise to ``out_step`` and clip to ``+-out_bound``.

    ``v`` holds output vectors along ``dim``. Returns ``(v_q, clipped)``: ``clipped`` (``v``'s
    shape without ``dim``, bool) flags the vectors with an output beyond the bound after
    digitisation (aihwkit's bound test). Straight-through gradient for the rounding.
    """
    if cfg.out_noise > 0:
        v = v + cfg.out_noise * _randn(v, gen)
    step = cfg.out_step
    if step is not None:
        v = quantize_step(v, step)
    if cfg.out_bound is None:
        shape = [n for i, n in enumerate(v.shape) if i != dim % v.dim()]
        return v, torch.zeros(shape, dtype=torch.bool, device=v.device)
    b = cfg.out_bound
    clipped = _absmax(v.detach(), dim, keepdim=False) > b * (1 + 1e-6)
    return v.clamp(-b, b), clipped


def bm_limit_reached(r: float, cfg: IOConfig) -> bool:
    """Whether reduction ``r`` ends iterative bound management (aihwkit's stop rule)."""
    step = cfg.inp_step
    return r > cfg.max_bm_factor or (step is not None and r > cfg.max_bm_res / step)


def _code_bound(bound: float, step: float) -> float:
    """``bound / step`` in codes, snapped to the integer it is meant to be."""
    b = bound / step
    return float(round(b)) if abs(b - round(b)) < 1e-6 else b


def _pass_fast(
    x: Tensor, s: Tensor, w: Tensor, cfg: IOConfig, gen, dim: int
) -> tuple[Tensor, Tensor | None]:
    """One round without autograd, on integer codes: the DAC step is folded into ``w`` and
    the ADC step into the output scale, which saves two passes over the large tensors; the
    same numbers as :func:`prepare_input` / :func:`output_noise_and_bound` (up to rounding)."""
    step = cfg.inp_step
    if step is None:
        c, ui = x / s, 1.0
        c.clamp_(-cfg.inp_bound, cfg.inp_bound)
    else:
        # x / (s step), the reference's arithmetic: abs-max elements re-run by bound
        # management sit exactly on rounding ties (u = 1/2, 1/4, ...), which must break alike
        c, ui = torch.div(x, s * step).round_(), step
        nb = _code_bound(cfg.inp_bound, step)
        # abs-max management keeps |x / s r| <= 1: the clip is a no-op unless a code beyond
        # inp_bound exists
        if not (cfg.noise_management == "abs_max" and cfg.nm_thres == 0 and round(1 / step) <= nb):
            c.clamp_(-nb, nb)
    if cfg.inp_noise > 0:
        c.add_(_randn(c, gen).mul_(cfg.inp_noise / ui))
    wu = w * ui if ui != 1.0 else w
    v = c @ wu if dim == -1 else torch.matmul(wu.t(), c)
    if cfg.out_noise > 0:
        v.add_(_randn(v, gen).mul_(cfg.out_noise))
    ostep = cfg.out_step
    uo = 1.0
    b = cfg.out_bound
    if ostep is not None:
        v.mul_(1.0 / ostep).round_()
        uo = ostep
        assert b is not None  # IOConfig.out_step raises without out_bound
        b = _code_bound(b, ostep)
    if b is None or (float(v.amax()) <= b and float(v.amin()) >= -b):
        # nothing beyond the bound (the usual case): two whole-tensor reductions, the clip (a
        # no-op then) skipped and no per-vector flags (None: no vector clipped); the same
        # numbers and flags as the per-vector test
        return v.mul_(s * uo), None
    clipped = _absmax(v, dim, keepdim=False) > b * (1 + 1e-6)
    v.clamp_(-b, b)
    return v.mul_(s * uo), clipped


def _pass_ref(
    x: Tensor, s: Tensor, w: Tensor, cfg: IOConfig, gen, dim: int
) -> tuple[Tensor, Tensor]:
    """One round through the reference functions (straight-through gradients)."""
    u = prepare_input(x, s, cfg, gen)
    v = u @ w if dim == -1 else torch.matmul(w.t(), u)
    v, clipped = output_noise_and_bound(v, cfg, gen, dim)
    return v * s, clipped


def io_mvm(
    x: Tensor,
    w: Tensor,
    cfg: IOConfig,
    gen: torch.Generator | None,
    dim: int = -1,
    scale: Tensor | None = None,
) -> Tensor:
    """One periphery-managed MVM of the vectors of ``x`` through the tile ``w`` (``in x out``,
    in the tile's units); see the module docstring.

    ``dim = -1``: ``x`` is ``(..., in)`` and the result ``(..., out)``. ``dim = 1``: ``x`` is
    ``(B, in, L)`` (an unfolded convolution input, one vector per column) and the result
    ``(B, out, L)``. The result is in the input's units times the tile's.
    Input and output noise are drawn from ``gen``. ``scale``: the noise-management scale of
    every vector if already known (as :func:`manage_input` returns it), else computed here.
    With autograd (hardware-aware training) the roundings pass gradients straight through.
    """
    if dim not in (-1, 1) or (dim == 1 and x.dim() != 3):
        raise ValueError(f"io_mvm: dim must be -1, or 1 for a (B, in, L) input; got {dim}")
    grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    one_pass = _pass_ref if grad else _pass_fast
    s = manage_input(x, cfg, dim) if scale is None else scale
    y, clipped = one_pass(x, s, w, cfg, gen, dim)
    if cfg.bound_management == "iterative" and clipped is not None and bool(clipped.any()):
        # re-run the clipping vectors alone, as (n, in) rows, with r = 2, 4, ...
        if dim == 1:
            xv, sv, yv = x.transpose(1, 2), s.transpose(1, 2), y.transpose(1, 2)
        else:
            xv, sv, yv = x, s, y
        idx = clipped.nonzero(as_tuple=True)
        rows, srow = xv[idx], sv[idx]  # (n, in), (n, 1)
        out = yv[idx]
        todo = torch.arange(rows.shape[0], device=x.device)
        r = 1.0
        while todo.numel() and not bm_limit_reached(r, cfg):
            r *= 2.0
            v, clip = one_pass(rows[todo], srow[todo] * r, w, cfg, gen, -1)
            out = out.index_copy(0, todo, v)
            todo = todo[clip] if clip is not None else todo[:0]
        yv = yv.index_put(idx, out)
        y = yv.transpose(1, 2) if dim == 1 else yv
    return y


def split_sizes(size: int, max_size: int) -> list[int]:
    """Near-equal consecutive split of ``size`` into ``ceil(size / max_size)`` parts (the
    first ones one larger), as aihwkit's ``TileModuleArray``; ``[size]`` if ``max_size`` is 0."""
    if max_size <= 0 or size <= max_size:
        return [size]
    n = -(-size // max_size)
    base, extra = divmod(size, n)
    return [base + (i < extra) for i in range(n)]


def readout_level(w: Tensor, cfg: IOConfig, gen: torch.Generator | None) -> float:
    """aihwkit's global drift-compensation read-out of one tile ``w`` (``in x out``): the
    one-hot input vectors through the periphery, ``max(mean |y|, 1e-4)``
    (``GlobalDriftCompensation.readout``). The gain at time t is ``level(W_0) / level(W_t)``.
    """
    eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    y = io_mvm(eye, w, cfg, gen)
    return max(float(y.abs().mean()), 1e-4)


def _randn(like: Tensor, gen: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
