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
    x: Tensor,
    s: Tensor,
    w: Tensor,
    cfg: IOConfig,
    gen,
    dim: int,
    keep: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One round without autograd, on integer codes: the DAC step is folded into ``w`` and
    the ADC step into the output scale, which saves two passes over the large tensors; the
    same numbers as :func:`prepare_input` / :func:`output_noise_and_bound` (up to rounding).
    ``keep``: if given, receives ``codes``, the DAC output in units of ``inp_step`` (of 1
    without a DAC) before any input noise, and, if some output lies beyond the bound,
    ``over``, the elementwise "beyond the bound before the clip" mask (the outputs whose
    gradient the clip stops)."""
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
    if keep is not None:
        keep["codes"] = c
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
    if keep is not None:
        keep["over"] = v.abs() > b
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
    With autograd (hardware-aware training) the roundings pass gradients straight through
    (:class:`_IOMVM`; the chain of reference functions, :func:`io_mvm_reference`, when the DAC
    adds noise).
    """
    if dim not in (-1, 1) or (dim == 1 and x.dim() != 3):
        raise ValueError(f"io_mvm: dim must be -1, or 1 for a (B, in, L) input; got {dim}")
    s = manage_input(x, cfg, dim) if scale is None else scale
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        if cfg.inp_noise > 0:  # the DAC noise is not kept for the backward: reference chain
            return _managed(x, s, w, cfg, gen, dim, _pass_ref)[0]
        y = _IOMVM.apply(x, w, s, cfg, gen, dim)
        assert isinstance(y, Tensor)
        return y
    return _managed(x, s, w, cfg, gen, dim, _pass_fast)[0]


def io_mvm_reference(
    x: Tensor, w: Tensor, cfg: IOConfig, gen: torch.Generator | None, dim: int = -1
) -> Tensor:
    """:func:`io_mvm` through the reference functions (:func:`prepare_input`,
    :func:`output_noise_and_bound`) in every round, gradients by autograd through their
    straight-through roundings and clips. The specification :class:`_IOMVM` is tested
    against (the same values, draws and gradients); 5-10x slower under autograd."""
    return _managed(x, manage_input(x, cfg, dim), w, cfg, gen, dim, _pass_ref)[0]


def _managed(
    x: Tensor,
    s: Tensor,
    w: Tensor,
    cfg: IOConfig,
    gen,
    dim: int,
    one_pass,
    keep: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The MVM with iterative bound management (module docstring), one round per
    ``one_pass``. Returns ``(y, r)``: ``r`` the final reduction of every vector (``s``'s
    shape), None if no vector was re-run. ``keep`` (``_pass_fast`` only): receives what each
    vector's final round left (:func:`_pass_fast`): ``codes`` (``x``'s shape) and, if any
    output clipped, ``over`` (``y``'s shape)."""
    if keep is None:
        y, clipped = one_pass(x, s, w, cfg, gen, dim)
    else:
        y, clipped = one_pass(x, s, w, cfg, gen, dim, keep)
    r_all: Tensor | None = None
    if cfg.bound_management == "iterative" and clipped is not None and bool(clipped.any()):
        # re-run the clipping vectors alone, as (n, in) rows, with r = 2, 4, ...
        def rows_of(t: Tensor) -> Tensor:
            return t.transpose(1, 2) if dim == 1 else t

        xv, sv, yv = rows_of(x), rows_of(s), rows_of(y)
        idx = clipped.nonzero(as_tuple=True)
        rows, srow = xv[idx], sv[idx]  # (n, in), (n, 1)
        out = yv[idx]
        todo = torch.arange(rows.shape[0], device=x.device)
        r = 1.0
        final: dict[str, Tensor] = {}
        if keep is not None:  # per re-run row: reduction, codes, beyond-bound mask
            final = {"r": torch.ones_like(srow), "codes": rows_of(keep["codes"])[idx]}
            final["over"] = rows_of(keep["over"])[idx]
        while todo.numel() and not bm_limit_reached(r, cfg):
            r *= 2.0
            if keep is None:
                v, clip = one_pass(rows[todo], srow[todo] * r, w, cfg, gen, -1)
            else:
                k: dict[str, Tensor] = {}
                v, clip = one_pass(rows[todo], srow[todo] * r, w, cfg, gen, -1, k)
                final["r"][todo] = r
                final["codes"][todo] = k["codes"]
                final["over"][todo] = k.get("over", False)
            out = out.index_copy(0, todo, v)
            todo = todo[clip] if clip is not None else todo[:0]
        yv = yv.index_put(idx, out)
        y = yv.transpose(1, 2) if dim == 1 else yv
        if keep is not None:
            r_all = torch.ones_like(s)
            rows_of(r_all)[idx] = final["r"]
            rows_of(keep["codes"])[idx] = final["codes"]
            rows_of(keep["over"])[idx] = final["over"]
            if not bool(keep["over"].any()):
                del keep["over"]
    return y, r_all


class _IOMVM(torch.autograd.Function):
    """:func:`io_mvm` under autograd: the forward is the fast pass (no graph of the
    elementwise steps), the backward the straight-through chain written out (Rasch et al.
    2023, Methods; aihwkit's ``AnalogMVM`` with STE roundings). With ``sr = s r`` the
    vector's noise-management scale times its final bound-management reduction,
    ``u = clip(step round(x / (sr step)), +-inp_bound)`` the DAC output and ``g`` the
    incoming gradient::

        g_v = g * sr, zero where the ADC clipped (|v| > out_bound before the clip)
        dL/dx = (g_v W^T, zero where the DAC clipped) / sr
        dL/dW = sum over vectors of u^T g_v

    the gradients autograd takes through :func:`io_mvm_reference` (tests/test_io_grad.py),
    without its saved intermediates. Where the DAC cannot clip (abs-max noise management, no
    cap: the default) the forward's DAC codes are kept instead of ``x`` and the ``sr`` of
    ``dL/dx`` cancels; else ``x`` is kept and the codes recomputed. ``s`` gets no gradient
    (the reference detaches it too).
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, s: Tensor, cfg: IOConfig, gen, dim: int) -> Tensor:
        keep: dict[str, Tensor] = {}
        y, r = _managed(x.detach(), s, w.detach(), cfg, gen, dim, _pass_fast, keep)
        sr = s if r is None else s * r
        ctx.cfg, ctx.dim = cfg, dim
        ctx.never_clips = _dac_never_clips(cfg)
        ctx.has_over = "over" in keep
        saved = keep["codes"] if ctx.never_clips else x
        over = keep.get("over", sr.new_empty(0))
        ctx.save_for_backward(saved, w, sr, over)
        return y

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor | None, ...]:
        saved, w, sr, over = ctx.saved_tensors
        cfg: IOConfig = ctx.cfg
        dim: int = ctx.dim
        step = cfg.inp_step
        ui = 1.0 if step is None else step
        g = grads[0]
        if ctx.has_over:
            g = g.masked_fill(over, 0.0)
        if ctx.never_clips:
            codes = saved
        else:  # recompute the DAC codes (and their clip) from x
            codes = torch.div(saved, sr * step).round_() if step is not None else saved / sr
        gx = gw = None
        if ctx.needs_input_grad[0]:
            if ctx.never_clips:  # (g sr) W^T / sr = g W^T
                gx = g @ w.t() if dim == -1 else _left_mm(w, g)
            else:
                gv = g * sr
                gu = gv @ w.t() if dim == -1 else _left_mm(w, gv)
                nb = _code_bound(cfg.inp_bound, step) if step is not None else cfg.inp_bound
                gx = gu.masked_fill_(codes.abs() > nb, 0.0).div_(sr)
        if ctx.needs_input_grad[1]:
            if not ctx.never_clips:
                nb = _code_bound(cfg.inp_bound, step) if step is not None else cfg.inp_bound
                codes = codes.clamp(-nb, nb)
            gv = g * (sr * ui)  # u^T (g sr) with u = codes * ui
            if dim == -1:
                gw = codes.reshape(-1, w.shape[0]).t() @ gv.reshape(-1, w.shape[1])
            else:
                gw = torch.bmm(codes, gv.transpose(1, 2)).sum(0)
        return gx, gw, None, None, None, None


def _left_mm(w: Tensor, g: Tensor) -> Tensor:
    """``w @ g[b]`` for every ``b`` of a ``(B, out, L)`` ``g``, as one ``bmm`` over a
    broadcast ``w`` (``torch.matmul`` folds ``B`` into the rows instead, which costs two
    transposing copies of the ``(B, in, L)`` result)."""
    return torch.bmm(w.unsqueeze(0).expand(g.shape[0], -1, -1), g)


def _dac_never_clips(cfg: IOConfig) -> bool:
    """Abs-max noise management without a cap keeps ``|x / s r| <= 1 <= inp_bound``: the
    DAC's clip (and its gradient mask) is then a no-op (as in :func:`_pass_fast`)."""
    step = cfg.inp_step
    if cfg.noise_management != "abs_max" or cfg.nm_thres != 0:
        return False
    if step is None:
        return cfg.inp_bound >= 1.0
    return round(1 / step) <= _code_bound(cfg.inp_bound, step)


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
