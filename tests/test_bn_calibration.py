"""BatchNorm re-calibration on the programmed chip (Bhattacharjee et al., GLSVLSI 2023):
statistics against their formula, a uniform drift undone exactly by adaptation, fine-tuning
touching only gamma/beta, Monte Carlo integration, and the straight-through converters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xbarprune.analog import BNCalibration, BNCalibrationConfig, convert, evaluate
from xbarprune.analog.batchnorm import batchnorm_state
from xbarprune.errors import SpecError
from xbarprune.hardware import CrossbarSpec
from xbarprune.hardware.nonideal.converters import quantize_uniform
from xbarprune.hardware.nonideal.model import Drift, NonIdealityConfig, NonIdealityModel
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.mapping import CrossbarLayout, map_model

DRIFT_T = 1e4  # nu = 0.1: every analog weight scaled by 1e4 ** -0.1 = 0.398


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 1, 8, 8, generator=g)
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(x[:256])
    with torch.no_grad():  # non-trivial affine BatchNorm parameters
        model[1].weight.uniform_(0.5, 1.5, generator=g)
        model[1].bias.uniform_(-0.5, 0.5, generator=g)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # labels: the ideal model's own decisions
    xbar = CrossbarSpec(16, 16)
    full = map_model(model, xbar)
    layout = CrossbarLayout(xbar, {"0": full.layers["0"]})  # the conv on crossbars
    return model, layout, TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:])


def _drift() -> NonIdealityModel:
    return NonIdealityModel.from_config(NonIdealityConfig(drift=Drift(nu_mean=0.1)))


def _programmed(model, layout, ni, t):
    am = convert(model, layout, DeviceSpec(), ni)
    am.program(torch.Generator().manual_seed(0), time_s=t)
    return am


def test_adaptation_statistics_match_their_formula():
    model, layout, train, _ = _setup()
    am = _programmed(model, layout, _drift(), DRIFT_T)
    cfg = BNCalibrationConfig(mode="adapt", samples=128, batch_size=128)  # one batch
    seen = []
    h = am.model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    BNCalibration(cfg, train, seed=3).apply(am, trial=0)
    h.remove()
    pre = seen[0]  # the analog conv's outputs for the sampled images
    assert pre.shape[0] == 128
    bn = am.model[1]
    mean = pre.mean((0, 2, 3))
    var = pre.transpose(0, 1).reshape(6, -1).var(1, unbiased=True)
    assert torch.allclose(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-6)
    assert not bn.training and bn.momentum == 0.1  # restored after the pass


def test_adaptation_undoes_a_uniform_drift():
    """A drift with one exponent scales every analog weight by k; BatchNorm adaptation makes
    the drifted chip compute what the undrifted chip computes after the same adaptation (up
    to BatchNorm's eps)."""
    model, layout, train, test = _setup()
    x = test.tensors[0]
    cfg = BNCalibrationConfig(mode="adapt", samples=256, batch_size=64)
    ideal = _programmed(model, layout, _drift(), 1.0)  # t = t0: no drift yet
    drifted = _programmed(model, layout, _drift(), DRIFT_T)
    with torch.no_grad():
        raw_gap = (drifted(x) - ideal(x)).abs().max().item()
    for am in (ideal, drifted):
        BNCalibration(cfg, train, seed=1).apply(am, trial=0)
    with torch.no_grad():
        gap = (drifted(x) - ideal(x)).abs().max().item()
    assert raw_gap > 0.05
    assert gap < 1e-3 * raw_gap


def test_finetune_changes_only_batchnorm_affine_and_lowers_the_loss():
    model, layout, train, _ = _setup()
    base = _programmed(model, layout, _drift(), DRIFT_T)
    adapt = copy.deepcopy(base)
    BNCalibration(BNCalibrationConfig(mode="adapt", samples=256), train, seed=2).apply(adapt, 0)
    tuned = copy.deepcopy(base)
    cfg = BNCalibrationConfig(mode="finetune", samples=256, batch_size=32, epochs=3, lr=0.1)
    BNCalibration(cfg, train, seed=2).apply(tuned, 0)
    x, y = train.tensors
    with torch.no_grad():
        loss_adapt = F.cross_entropy(adapt(x), y).item()
        loss_tuned = F.cross_entropy(tuned(x), y).item()
    assert loss_tuned < loss_adapt
    before, after = dict(base.named_parameters()), dict(tuned.named_parameters())
    for name, p in after.items():
        same = torch.equal(p, before[name])
        assert same == (".1." not in f".{name}"), name  # module "1" is the BatchNorm
        assert p.requires_grad and p.grad is None
    again = copy.deepcopy(base)
    BNCalibration(cfg, train, seed=2).apply(again, 0)
    assert torch.equal(again.model[1].weight, tuned.model[1].weight)  # deterministic


def test_monte_carlo_with_bn_adaptation_recovers_accuracy_and_keeps_the_model():
    model, layout, train, test = _setup()
    loader = DataLoader(test, batch_size=128)
    state = batchnorm_state(model)
    ni = _drift()
    kw = {"trials": 2, "times": (DRIFT_T,), "seed": 0}
    plain = evaluate(model, loader, layout, DeviceSpec(), ni, **kw)[0]
    cal = BNCalibration(BNCalibrationConfig(mode="adapt", samples=256), train, seed=0)
    adapted = evaluate(model, loader, layout, DeviceSpec(), ni, bn_calibration=cal, **kw)[0]
    assert plain.mean < 0.95  # labels are the ideal model's decisions: drift costs > 5 %
    assert adapted.mean >= 0.99
    for k, v in batchnorm_state(model).items():
        assert torch.equal(v, state[k]), k  # the caller's model is untouched
    again = evaluate(model, loader, layout, DeviceSpec(), ni, bn_calibration=cal, **kw)[0]
    assert again.per_trial == adapted.per_trial


def test_converters_pass_gradients_straight_through_within_range():
    x = torch.tensor([-2.0, -0.3, 0.26, 0.9, 2.0], requires_grad=True)
    q = quantize_uniform(x, 4, 1.0)
    assert torch.equal(q.detach(), quantize_uniform(x.detach(), 4, 1.0))
    q.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"mode": "retrain"}, "mode"), ({"samples": 0}, "samples"), ({"lr": -1.0}, "lr")],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(SpecError, match=f"bn_calibration.{field}"):
        BNCalibrationConfig(**kw)
