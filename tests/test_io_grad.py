"""Issue #20 (hardware-aware training speed): ``io_mvm`` under autograd runs the fast pass
forward and a written-out straight-through backward (``_IOMVM``). It must give the values,
the random draws and the gradients that autograd takes through the reference chain
(``io_mvm_reference``: ``prepare_input`` -> matmul -> ``output_noise_and_bound`` in every
bound-management round), in every regime: DAC clip active or not, ADC clip with and without
bound management, vectors re-run once or several times, no DAC, no ADC, conv (dim 1) and
linear (dim -1) layouts. Plus one gradient worked by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from xbarprune.hardware.nonideal.io import IOConfig, io_mvm, io_mvm_reference

CASES = {
    "aihwkit-default": IOConfig(),
    "no-clip": IOConfig(out_bound=1e3, out_res=None),
    "adc-clips-bm": IOConfig(out_bound=1.5, out_res=1 / 30),  # vectors re-run, r = 2, 4, ...
    "adc-clips-bm-limited": IOConfig(out_bound=0.4, out_res=1 / 30, max_bm_factor=2),
    "adc-clips-no-bm": IOConfig(out_bound=1.0, out_res=1 / 30, bound_management="none"),
    "dac-clips": IOConfig(noise_management="none", inp_bound=0.8, inp_res=1 / 30),
    "nm-thres": IOConfig(nm_thres=0.7, out_bound=2.0),
    "no-dac-no-adc": IOConfig(inp_res=None, out_res=None, out_bound=2.0),
    "no-dac-no-adc-no-nm": IOConfig(
        inp_res=None, out_res=None, out_bound=2.0, noise_management="none", inp_bound=0.9
    ),
}


def _pair(cfg: IOConfig, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if dim == -1:
        x = torch.randn(40, 9, generator=g)
    else:
        x = torch.randn(3, 9, 11, generator=g)
    w = torch.randn(9, 6, generator=g) * 0.6
    gy_shape = (40, 6) if dim == -1 else (3, 6, 11)
    gy = torch.randn(gy_shape, generator=g)
    out = []
    for fn in (io_mvm, io_mvm_reference):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        gen = torch.Generator().manual_seed(7)
        y = fn(xx, ww, cfg, gen, dim)
        (y * gy).sum().backward()
        out.append((y.detach(), xx.grad, ww.grad, gen.get_state()))
    return out


@pytest.mark.parametrize("dim", [-1, 1])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_autograd_equals_reference_chain(name, dim):
    (y, gx, gw, st), (yr, gxr, gwr, str_) = _pair(CASES[name], dim)
    assert torch.equal(st, str_)  # the same draws, in the same order
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gxr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gwr, rtol=1e-5, atol=1e-5)


def test_regimes_are_exercised():
    """The cases above reach what they are named after (else the equality is vacuous)."""
    (_, gx, gw, _), _ = _pair(CASES["adc-clips-no-bm"], -1)
    assert (gx == 0).all(dim=1).sum() == 0  # a clipped output zeroes part of a row only
    x = torch.randn(40, 9, generator=torch.Generator().manual_seed(0))
    w = torch.randn(9, 6, generator=torch.Generator().manual_seed(1)) * 0.6
    y_none = io_mvm(x, w, CASES["adc-clips-no-bm"], None)
    assert (y_none.abs() == y_none.abs().amax(1, keepdim=True)).any()
    # the DAC case clips inputs: some input gradient entries are exactly zero
    (_, gx, _, _), (_, gxr, _, _) = _pair(CASES["dac-clips"], -1)
    assert int((gxr == 0).sum()) > 0 and torch.equal(gx == 0, gxr == 0)


def test_gradient_by_hand():
    """One vector, no noise: x = (1, -0.5), W = (2, 1)^T, abs-max s = 1, DAC step 0.25 (so
    u = (1, -0.5)), v = 2 - 0.5 = 1.5; with out_bound 1 the ADC clips it: the first round
    flags it, r = 2 gives u = (0.5, -0.25), v = 0.75 (within the bound), y = 0.75 * 2 = 1.5.
    dL/dy = 1: g_v = s r = 2, dL/dx = g_v W^T / (s r) = (2, 1), dL/dW = u^T g_v = (1, -0.5)."""
    cfg = IOConfig(inp_res=0.125, out_res=None, out_bound=1.0, out_noise=0.0)
    x = torch.tensor([[1.0, -0.5]], requires_grad=True)
    w = torch.tensor([[2.0], [1.0]], requires_grad=True)
    y = io_mvm(x, w, cfg, None)
    y.sum().backward()
    assert y.item() == pytest.approx(1.5)
    assert x.grad.flatten().tolist() == pytest.approx([2.0, 1.0])
    assert w.grad.flatten().tolist() == pytest.approx([1.0, -0.5])
    # the same with bound management off: v = 1.5 clips to 1, no gradient passes
    x.grad = w.grad = None
    y = io_mvm(x, w, replace(cfg, bound_management="none"), None)
    y.sum().backward()
    assert y.item() == pytest.approx(1.0)
    assert x.grad.abs().sum() == 0 and w.grad.abs().sum() == 0


def test_hwa_training_step_equals_the_reference_chain(monkeypatch):
    """A whole LeNet-5 HWA step through aihwkit-default (conv layers on unfolded patches,
    non-negative inputs after ReLUs, linear layers): the parameter gradients of the fast path
    equal those of the reference chain, and the noise generator ends in the same state."""
    from xbarprune.models import build_model
    from xbarprune.training import hwa as hwa_mod
    from xbarprune.training.hwa import HWAConfig, install_hwa

    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(4))
    cfg = HWAConfig(preset="aihwkit-default", weight_noise=0.038)

    def grads():
        model = build_model("lenet5", in_channels=1, image_size=28, seed=0).train()
        install_hwa(model, cfg, seed=5)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    fast = grads()

    def reference(x, w, io, gen, dim=-1, scale=None):
        return io_mvm_reference(x, w, io, gen, dim)

    monkeypatch.setattr(hwa_mod, "io_mvm", reference)
    ref = grads()
    assert fast.keys() == ref.keys()
    for n in fast:
        torch.testing.assert_close(fast[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)
    assert any(g.abs().sum() > 0 for g in fast.values())
