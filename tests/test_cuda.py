"""The issue-#20 paths on CUDA (skipped without a GPU): the per-tile ADC kernels give the same
bits on the GPU as on the CPU when the partial sums are exact (dyadic slices, integer inputs),
and batched trials equal sequential trials on the GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xbarprune.analog import convert, evaluate, trial_generator
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.hardware.nonideal.model import (
    Drift,
    NonIdealityConfig,
    NonIdealityModel,
    ProgrammingVariation,
    Quantization,
    StuckAtFaults,
)
from xbarprune.mapping import map_model, pack_columns, weight_to_matrix

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 7, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 3 * 3, 11),
    ).eval()


def _dyadic(layer, seed: int, levels: int = 17) -> None:
    g = torch.Generator().manual_seed(seed)
    k = layer.layout.crossbar.cells_per_weight
    R, C = layer.layout.matrix_shape
    s = torch.randint(0, levels, (k, R, C), generator=g).float() / (levels - 1)
    layer._slices = (s * layer.layout.placed).to(layer._slices.device)
    layer._conv_w = None
    layer.adc_fs = 2.3


@pytest.mark.parametrize(
    "xbar",
    [CrossbarSpec(16, 8), CrossbarSpec(16, 20, cells_per_weight=2, encoding="offset")],
    ids=["diff", "k2-offset"],
)
@pytest.mark.parametrize("packed", [False, True])
def test_tile_kernels_same_bits_on_cuda_as_on_cpu(xbar, packed):
    net = _net()
    with torch.no_grad():
        net[2].weight[1::3] = 0
    lay = map_model(net, xbar)
    if packed:
        lay = lay.replace(pack_columns(lay["2"], weight_to_matrix(net[2].weight.detach())))
    cfg = NonIdealityModel.from_config(NonIdealityConfig(adc_bits=5))
    g = torch.Generator().manual_seed(2)
    xs = {2: torch.randint(-3, 4, (5, 6, 8, 8), generator=g).float()}
    xs[5] = torch.randint(-3, 4, (5, 63), generator=g).float()
    outs = {}
    for dev in ("cpu", "cuda"):
        am = convert(net, lay, DeviceSpec(levels=17), cfg).to(dev)
        am.program(trial_generator(0, 0, dev))
        for idx, x in xs.items():
            layer = am.model[idx]
            _dyadic(layer, idx)
            with torch.no_grad():
                outs[dev, idx] = layer(x.to(dev)).cpu()
    for idx in xs:
        assert torch.equal(outs["cpu", idx], outs["cuda", idx])


def test_batched_trials_equal_sequential_trials_on_cuda():
    net = _net().cuda()
    lay = map_model(net, CrossbarSpec(16, 8))
    cfg = NonIdealityConfig(
        quantization=Quantization(),
        variation=ProgrammingVariation(sigma=0.3, mode="relative"),
        faults=StuckAtFaults(sa0=0.05, sa1=0.05),
        drift=Drift(nu_mean=0.1, nu_std=0.03, t0=1.0),
        dac_bits=6,
    )
    ni = NonIdealityModel.from_config(cfg)
    am = convert(net, lay, DeviceSpec(), ni).cuda()
    x = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(6)).cuda()
    with torch.no_grad():
        am.program_trials([trial_generator(3, i, "cuda") for i in range(4)])
        yb = am(x.repeat_interleave(4, 0)).view(24, 4, -1)
        assert yb.is_cuda
        for i in range(4):
            am.program(trial_generator(3, i, "cuda"))
            torch.testing.assert_close(yb[:, i], am(x), rtol=1e-4, atol=1e-5)
        y = net(x).argmax(1)
    data = [(x[:12], y[:12]), (x[12:], y[12:])]
    seq = evaluate(net, data, lay, DeviceSpec(), ni, trials=5, seed=3)
    bat = evaluate(net, data, lay, DeviceSpec(), ni, trials=5, seed=3, batch_trials=5)
    assert seq[0].per_trial == bat[0].per_trial


@pytest.mark.parametrize("dim", [-1, 1])
def test_io_mvm_autograd_equals_reference_chain_on_cuda(dim):
    """Hardware-aware training's fast periphery path (``_IOMVM``) on the GPU: values and
    gradients equal the reference chain's on the GPU, with bound management triggered."""
    from xbarprune.hardware.nonideal.io import IOConfig, io_mvm, io_mvm_reference

    dev = torch.device("cuda")
    cfg = IOConfig(out_bound=1.5, out_res=1 / 30)
    g = torch.Generator(device=dev).manual_seed(0)
    shape = (40, 9) if dim == -1 else (3, 9, 11)
    x = torch.randn(shape, generator=g, device=dev)
    w = torch.randn(9, 6, generator=g, device=dev) * 0.6
    out = []
    for fn in (io_mvm, io_mvm_reference):
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        gen = torch.Generator(device=dev).manual_seed(7)
        y = fn(xx, ww, cfg, gen, dim)
        y.square().sum().backward()
        out.append((y.detach(), xx.grad, ww.grad))
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
