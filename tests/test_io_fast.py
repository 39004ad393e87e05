"""Issue #20, aihwkit-default speed-up: the faster weight-level periphery (``io_mvm``'s fast
pass, ``manage_input``, ``forward_weight_level``) gives bitwise the outputs, and draws the
same random numbers in the same order, as a frozen copy of the code before the change
(commit 7847d83), kept below. Conv and linear layers, bound management triggered and not,
noise management ``abs_max`` (signed and non-negative inputs) and ``none``, one chunk and
several, one tile and several (``max_input_size``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from xbarprune.analog import convert, periphery, trial_generator
from xbarprune.analog.layers import AnalogLayer
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal import NonIdealityModel, preset
from xbarprune.hardware.nonideal.io import IOConfig, _pass_ref, bm_limit_reached, io_mvm
from xbarprune.mapping import map_model

# ---- frozen copy of the code before the change (reference; do not edit) ----------------


def _old_absmax(x: Tensor, dim, keepdim: bool = True) -> Tensor:
    return torch.maximum(x.amax(dim, keepdim=keepdim), x.amin(dim, keepdim=keepdim).neg_())


def _old_manage_input(x: Tensor, cfg: IOConfig, dim=-1) -> Tensor:
    shape = list(x.shape)
    for d in dim if isinstance(dim, tuple) else (dim,):
        shape[d] = 1
    if cfg.noise_management == "none":
        return torch.ones(shape, dtype=x.dtype, device=x.device)
    s = _old_absmax(x.detach(), dim)
    if cfg.nm_thres > 0:
        s = s.clamp_(max=cfg.nm_thres)
    return s.masked_fill_(s <= 0, 1.0)


def _old_code_bound(bound: float, step: float) -> float:
    b = bound / step
    return float(round(b)) if abs(b - round(b)) < 1e-6 else b


def _old_randn(like: Tensor, gen) -> Tensor:
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


def _old_pass_fast(x, s, w, cfg: IOConfig, gen, dim):
    step = cfg.inp_step
    if step is None:
        c, ui = x / s, 1.0
        c.clamp_(-cfg.inp_bound, cfg.inp_bound)
    else:
        c, ui = torch.div(x, s * step).round_(), step
        nb = _old_code_bound(cfg.inp_bound, step)
        if not (cfg.noise_management == "abs_max" and cfg.nm_thres == 0 and round(1 / step) <= nb):
            c.clamp_(-nb, nb)
    if cfg.inp_noise > 0:
        c.add_(_old_randn(c, gen).mul_(cfg.inp_noise / ui))
    wu = w * ui if ui != 1.0 else w
    v = c @ wu if dim == -1 else torch.matmul(wu.t(), c)
    if cfg.out_noise > 0:
        v.add_(_old_randn(v, gen).mul_(cfg.out_noise))
    ostep = cfg.out_step
    uo = 1.0
    b = cfg.out_bound
    if ostep is not None:
        v.mul_(1.0 / ostep).round_()
        uo = ostep
        b = _old_code_bound(cfg.out_bound, ostep)
    if b is None:
        clipped = torch.zeros(1, dtype=torch.bool, device=v.device).expand(
            [n for i, n in enumerate(v.shape) if i != dim % v.dim()]
        )
    else:
        clipped = _old_absmax(v, dim, keepdim=False) > b * (1 + 1e-6)
        v.clamp_(-b, b)
    return v.mul_(s * uo), clipped


def _old_io_mvm(x, w, cfg: IOConfig, gen, dim=-1, scale=None):
    grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    one_pass = _pass_ref if grad else _old_pass_fast
    s = _old_manage_input(x, cfg, dim) if scale is None else scale
    y, clipped = one_pass(x, s, w, cfg, gen, dim)
    if cfg.bound_management == "iterative" and bool(clipped.any()):
        if dim == 1:
            xv, sv, yv = x.transpose(1, 2), s.transpose(1, 2), y.transpose(1, 2)
        else:
            xv, sv, yv = x, s, y
        idx = clipped.nonzero(as_tuple=True)
        rows, srow = xv[idx], sv[idx]
        out = yv[idx]
        todo = torch.arange(rows.shape[0], device=x.device)
        r = 1.0
        while todo.numel() and not bm_limit_reached(r, cfg):
            r *= 2.0
            v, clip = one_pass(rows[todo], srow[todo] * r, w, cfg, gen, -1)
            out = out.index_copy(0, todo, v)
            todo = todo[clip]
        yv = yv.index_put(idx, out)
        y = yv.transpose(1, 2) if dim == 1 else yv
    return y


def _old_finish(layer, y, dim):
    m = layer.inner
    C = layer.layout.matrix_shape[1]
    view = (-1, C) if dim == -1 else (1, C, 1)
    if layer._col_gain is not None:
        y = y * layer._col_gain.to(y.dtype).view(view)
    if m.bias is not None:
        y = y + m.bias.to(y.dtype).view(view)
    return y


def _old_apply(layer, x, run):
    m = layer.inner
    R, C = layer.layout.matrix_shape
    if isinstance(m, nn.Conv2d):
        ho, wo = periphery._out_hw(m, x)
        n = max(1, periphery._CHUNK_ELEMS // max(1, R * ho * wo))
        ys = []
        for s in range(0, x.shape[0], n):
            v = periphery.unfold(m, x[s : s + n])
            ys.append(_old_finish(layer, run(v, 1), 1).view(-1, C, ho, wo))
        return ys[0] if len(ys) == 1 else torch.cat(ys)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, R)
    n = max(1, periphery._CHUNK_ELEMS // max(1, R))
    ys = [run(x2[s : s + n], -1) for s in range(0, x2.shape[0], n)]
    y = ys[0] if len(ys) == 1 else torch.cat(ys)
    return _old_finish(layer, y, -1).view(*lead, C)


def _old_forward_weight_level(layer, x):
    io = layer.io
    w = layer._w_eff.to(x.dtype)
    f = periphery.weight_factor(io, layer._w_max)
    wt = w * f if f != 1.0 else w
    gains = layer._io_gains
    gen = layer._read_gen
    sizes = periphery.split_sizes(w.shape[0], io.max_input_size)

    def run(xc, dim):
        y = None
        r0 = 0
        for j, n in enumerate(sizes):
            xj = xc if n == w.shape[0] else periphery._rows(xc, dim, slice(r0, r0 + n))
            yj = _old_io_mvm(xj, wt[r0 : r0 + n], io, gen, dim)
            g = (1.0 if gains is None else float(gains[j])) / f
            if g != 1.0:
                yj = yj * g
            y = yj if y is None else y + yj
            r0 += n
        return y

    return _old_apply(layer, x, run)


# ---- the tests ---------------------------------------------------------------------------

IO_CASES = {
    "default": IOConfig(),  # aihwkit's: bound management rarely triggered
    "bm": IOConfig(out_bound=0.6, out_noise=0.3),  # many vectors clip and are re-run
    "bm-inp-noise": IOConfig(out_bound=0.6, inp_noise=0.05),
    "nm-none": IOConfig(noise_management="none", out_bound=2.0),
    "nm-none-no-bm": IOConfig(noise_management="none", bound_management="none", out_bound=2.0),
    "no-adc-no-bound": IOConfig(out_res=None, out_bound=None),
    "no-dac": IOConfig(inp_res=None, out_bound=0.6),
    "thres": IOConfig(nm_thres=0.5, out_bound=0.6),
}


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("case", sorted(IO_CASES))
@pytest.mark.parametrize("kind", ["linear", "conv-signed", "conv-nonneg"])
def test_io_mvm_bitwise_equals_frozen(case, kind):
    io = IO_CASES[case]
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20, 7, generator=g) * 0.4
    if kind == "linear":
        x, dim = torch.randn(50, 20, generator=g) * 2, -1
    else:
        x, dim = torch.randn(3, 20, 30, generator=g) * 2, 1
        if kind == "conv-nonneg":
            x = x.relu()
    x[0].zero_()  # a zero vector (scale 1)
    ga, gb = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    with torch.no_grad():
        new = io_mvm(x.clone(), w, io, ga, dim)
        old = _old_io_mvm(x.clone(), w, io, gb, dim)
    assert _same(new, old)
    assert torch.equal(ga.get_state(), gb.get_state())  # the same draws, in the same order
    if case.startswith("bm"):  # the case exercises bound management
        s = _old_manage_input(x, io, dim)
        _, clipped = _old_pass_fast(x, s, w, io, torch.Generator().manual_seed(0), dim)
        assert bool(clipped.any())


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),  # signed input
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2),  # non-negative input
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 5 * 5, 12),
        nn.ReLU(),
        nn.Linear(12, 4),
    ).eval()


@pytest.mark.parametrize("case", ["default", "bm", "nm-none", "no-adc-no-bound"])
@pytest.mark.parametrize("chunk", [1 << 18, 700])  # one chunk, several chunks
@pytest.mark.parametrize("max_in", [512, 16])  # one tile, several row tiles per layer
def test_forward_weight_level_bitwise_equals_frozen(case, chunk, max_in, monkeypatch):
    monkeypatch.setattr(periphery, "_CHUNK_ELEMS", chunk)
    io = replace(IO_CASES[case], max_input_size=max_in)
    cfg = replace(preset("aihwkit-default"), io=io)
    model = _net()
    am = convert(
        model,
        map_model(model, CrossbarSpec(16, 16)),
        DeviceSpec(),
        NonIdealityModel.from_config(cfg),
    )
    x = torch.randn(9, 2, 11, 11, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        am.program(trial_generator(0, 0), 86400.0)
        layers = [m for m in am.modules() if isinstance(m, AnalogLayer)]
        assert len(layers) == 4
        h = x
        for m in am.model:
            if isinstance(m, AnalogLayer):
                st = m._read_gen.get_state()
                new = periphery.forward_weight_level(m, h)
                st_new = m._read_gen.get_state()
                m._read_gen.set_state(st)
                old = _old_forward_weight_level(m, h)
                assert _same(new, old), m
                assert torch.equal(st_new, m._read_gen.get_state())
                h = new
            else:
                h = m(h)
        # and through the model's own forward (the path the benchmark times)
        am.program(trial_generator(0, 1), 86400.0)
        y_new = am(x)
        am.program(trial_generator(0, 1), 86400.0)
        h = x
        for m in am.model:
            h = _old_forward_weight_level(m, h) if isinstance(m, AnalogLayer) else m(h)
        assert _same(y_new, h)


def test_chunked_conv_keeps_gradients(monkeypatch):
    """Hardware-aware training through several conv chunks: the output is concatenated (not
    written with ``out=``) and gradients reach the input; values equal the no-grad path."""
    monkeypatch.setattr(periphery, "_CHUNK_ELEMS", 700)
    model = _net()
    cfg = replace(preset("aihwkit-default"), io=IO_CASES["bm"])
    am = convert(
        model,
        map_model(model, CrossbarSpec(16, 16)),
        DeviceSpec(),
        NonIdealityModel.from_config(cfg),
    )
    am.program(trial_generator(0, 0))
    conv = am.model[0]
    x = torch.randn(5, 2, 11, 11, generator=torch.Generator().manual_seed(4), requires_grad=True)
    st = conv._read_gen.get_state()
    y = periphery.forward_weight_level(conv, x)
    y.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    conv._read_gen.set_state(st)
    with torch.no_grad():
        y0 = periphery.forward_weight_level(conv, x)
    assert torch.allclose(y.detach(), y0, atol=1e-5)
