"""ADMM pruning + memristor quantisation (Ma et al. 2020): projections, level set, distillation,
a tiny end-to-end run and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from xbarprune.compress.methods.admm import (
    MA2020_DEVICE,
    ADMMParams,
    ADMMRegularizer,
    allocate_alpha,
    layer_groups,
    ma2020_crossbar,
    project_all,
    project_structure,
)
from xbarprune.compress.parts.quantize import (
    LevelSet,
    distillation_loss,
    memristor_levels,
    on_levels,
    project_levels,
    ste_quantize,
)
from xbarprune.config import from_dict
from xbarprune.errors import CompressionError, ConfigError, SpecError
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.mapping import map_model, weight_to_matrix


def _linear_layout(w: torch.Tensor):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = nn.Sequential(lin)
    return model, map_model(model, CrossbarSpec(8, 8))


# ----------------------------------------------------------------------------- P projection
def test_structure_projection_keeps_the_alpha_largest_filters():
    # mapped matrix (3 inputs x 4 filters); column (filter) norms: 5, 1, 13, 3 (ties none)
    mat = torch.tensor([[3.0, 1.0, 5.0, 0.0], [4.0, 0.0, 12.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    model, lay = _linear_layout(mat.t())
    groups = layer_groups(lay["0"], "filter")
    out, mask = project_structure(mat, groups, 2, layer="0")
    expected = torch.tensor([[3.0, 0, 5.0, 0], [4.0, 0, 12.0, 0], [0, 0, 0, 0]])
    assert torch.equal(out, expected)
    assert mask.all(0).tolist() == [True, False, True, False]
    # alpha = number of groups keeps everything; ties go to the lower index
    assert torch.equal(project_structure(mat, groups, 4)[0], mat)
    tie = torch.ones(2, 3)
    _, lay2 = _linear_layout(tie.t())
    assert project_structure(tie, layer_groups(lay2["0"], "filter"), 1)[1].all(0).tolist() == [
        True,
        False,
        False,
    ]


def test_shape_groups_are_rows_and_channel_groups_follow_the_kernel():
    conv = nn.Conv2d(2, 3, 2, bias=False)
    lay = map_model(nn.Sequential(conv), CrossbarSpec(8, 8))["0"]
    shape = layer_groups(lay, "shape")
    assert len(shape) == 8 and int(shape.sizes[0]) == 3  # one row = a (channel, ky, kx) x 3
    mat = torch.zeros(8, 3)
    mat[5] = torch.tensor([1.0, 2.0, 2.0])  # channel 1, kernel position (0, 1)
    mat[0] = 0.1
    out, _ = project_structure(mat, shape, 1)
    assert torch.equal(out[5], mat[5]) and out.abs().sum() == mat[5].abs().sum()
    assert len(layer_groups(lay, "channel")) == 2


def test_bad_group_budget_names_the_layer():
    mat = torch.ones(3, 4)
    _, lay = _linear_layout(mat.t())
    g = layer_groups(lay["0"], "filter")
    with pytest.raises(CompressionError, match="layer 'fc9'.*outside \\[1, 4\\]"):
        project_structure(mat, g, 5, layer="fc9")
    with pytest.raises(CompressionError, match="fc9"):
        project_structure(mat, g, 0, layer="fc9")
    with pytest.raises(SpecError, match="allowed"):
        layer_groups(lay["0"], "rows")


# ----------------------------------------------------------------------------- level set / Q
def test_level_set_from_device():
    ls = memristor_levels(DeviceSpec(levels=4), 1)  # codes 0..3, zero reserved for pruning
    assert torch.allclose(ls.magnitudes, torch.tensor([1 / 3, 2 / 3, 1.0]))
    assert len(ls) == 6 and torch.allclose(ls.levels(3.0), torch.tensor([-3.0, -2, -1, 1, 2, 3]))
    eight = memristor_levels(DeviceSpec(levels=16), 2)  # 8-bit weight = two 4-bit cells
    assert eight.codes == 256 and len(eight) == 2 * 255
    assert memristor_levels(DeviceSpec(levels=16), 1, bits=8).codes == 256
    cond = memristor_levels(MA2020_DEVICE, 1, mode="conductance")
    assert float(cond.magnitudes[0]) == pytest.approx(0.1)  # g_min/g_max = R_on/R_off
    assert float(cond.magnitudes[-1]) == pytest.approx(1.0) and len(cond) == 32


def test_fewer_than_two_levels_is_refused_with_the_layer_name():
    with pytest.raises(CompressionError, match="layer 'features.conv1'"):
        memristor_levels(DeviceSpec(), 1, bits=0, layer="features.conv1")
    with pytest.raises(CompressionError, match="at least 2 levels"):
        LevelSet(torch.tensor([]))


def test_level_projection_hand_case():
    ls = memristor_levels(DeviceSpec(levels=4), 1)  # magnitudes 1/3, 2/3, 1
    x = torch.tensor([0.9, -0.5, 0.1, 0.0, 0.0, -0.05, 0.46])
    mask = torch.tensor([True, True, True, False, True, True, True])
    q = project_levels(x, ls, mask)  # scale = 0.9 -> levels 0.3, 0.6, 0.9
    expected = torch.tensor([0.9, -0.6, 0.3, 0.0, 0.3, -0.3, 0.6])
    assert torch.allclose(q, expected)
    # default mask: pruned zeros stay zero, every non-zero becomes a non-zero level
    q2 = project_levels(torch.tensor([0.0, 0.01, -0.9]), ls)
    assert q2[0] == 0 and torch.allclose(q2[1:], torch.tensor([0.3, -0.9]))


def test_level_projection_is_the_nearest_level_and_never_zero():
    g = torch.Generator().manual_seed(0)
    ls = memristor_levels(DeviceSpec(levels=16), 1)
    x = torch.randn(500, generator=g) * 0.2
    x[::7] = 0.0
    keep = torch.rand(500, generator=g) > 0.3
    q = project_levels(x, ls, keep)
    s = float(x[keep].abs().max())
    lv = ls.levels(s)
    brute = lv[(x.view(-1, 1) - lv.view(1, -1)).abs().argmin(1)]
    ties = ((x.view(-1, 1) - lv.view(1, -1)).abs().sort(1).values[:, :2].diff(1).abs() < 1e-6)[:, 0]
    ok = keep & ~ties & (x != 0)
    assert torch.allclose(q[ok], brute[ok])
    assert (q[~keep] == 0).all() and (q[keep] != 0).all()
    assert on_levels(q, ls, keep)


def test_quantised_weights_pass_the_simulator_grid_unchanged():
    from xbarprune.hardware.conductance import decode, encode
    from xbarprune.hardware.nonideal.quantization import quantize_levels

    dev, xbar = DeviceSpec(levels=16), CrossbarSpec(16, 16, cells_per_weight=2)
    ls = memristor_levels(dev, xbar.cells_per_weight)
    w = project_levels(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), ls)
    w_max = float(w.abs().max())
    g = quantize_levels(encode(w, w_max, xbar, dev), dev.g_min, dev.g_max, dev.levels)
    assert torch.allclose(decode(g, w_max, xbar, dev), w, atol=1e-6 * w_max)


def test_ste_forward_is_quantised_backward_is_identity_on_kept():
    ls = memristor_levels(DeviceSpec(levels=4), 1)
    w = torch.tensor([0.9, -0.5, 0.2], requires_grad=True)
    mask = torch.tensor([True, True, False])
    out = ste_quantize(w, ls, mask)
    assert torch.allclose(out.detach(), torch.tensor([0.9, -0.6, 0.0]))
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(w.grad, torch.tensor([1.0, 2.0, 0.0]))


def test_distillation_loss_eq10():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    ce = F.cross_entropy(zs, y)
    assert torch.allclose(distillation_loss(zs, y, zt, sigma=0.0), ce)
    T = 3.0
    pt = F.softmax(zt / T, 1)
    kl = (pt * (pt.log() - F.log_softmax(zs / T, 1))).sum(1).mean()
    val = distillation_loss(zs, y, zt, sigma=0.25, temperature=T)
    assert torch.allclose(val, 0.75 * ce + 0.25 * T * T * kl, atol=1e-6)
    assert torch.allclose(distillation_loss(zs, y, zs, sigma=1.0), torch.tensor(0.0), atol=1e-6)


# ----------------------------------------------------------------------------- ADMM state
def test_admm_regularizer_value_and_dual_update():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.5]])  # Linear 2 -> 3; filters = rows
    model, lay = _linear_layout(w)
    groups = layer_groups(lay["0"], "filter")
    ls = memristor_levels(DeviceSpec(levels=4), 1)
    reg = ADMMRegularizer(model, {"0": (groups, 1)}, {"0": ls}, rho=0.5, rho_growth=2.0)
    Y = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.equal(reg.Y[("0", 0)], Y)
    Z = torch.tensor([[8 / 3, 4.0], [0.0, 0.0], [0.0, 0.0]])  # on Y's support, scale 4
    assert torch.allclose(reg.Z["0"], Z)
    expected = 0.25 * ((w - Y).pow(2).sum() + (w - Z).pow(2).sum())
    assert torch.allclose(reg(model, 0.0), expected)
    reg(model, 0.0).backward()
    assert torch.allclose(model[0].weight.grad, 0.5 * ((w - Y) + (w - Z)))
    rec = reg.update()
    # U = (W - Y) rescaled by rho_old / rho_new = 1/2
    assert torch.allclose(reg.U[("0", 0)], 0.5 * (w - Y)) and reg.rho == 1.0
    assert rec["structure_residual"]["0"] == pytest.approx(float((w - Y).norm() / w.norm()))


def test_two_constraints_keep_a_submatrix():
    # mapped matrix 3 inputs x 4 filters; at most 2 shapes (rows) and 2 filters (columns)
    mat = torch.tensor([[5.0, 0.1, 4.0, 0.0], [0.2, 9.0, 0.1, 0.0], [4.0, 0.0, 5.0, 0.3]])
    model, lay = _linear_layout(mat.t())
    rows, cols = layer_groups(lay["0"], "shape"), layer_groups(lay["0"], "filter")
    m = project_all(mat, [(rows, 2), (cols, 2)], layer="0")
    # independent choices keep rows {1, 2} x cols {1, 0} (energy 97.04); alternating moves to
    # rows {0, 1} x cols {0, 1} (106.05), the best 2 x 2 submatrix (brute force below)
    assert int(m.sum()) == 4 and m.bool().any(1).tolist() == [True, True, False]
    assert m.bool().any(0).tolist() == [True, True, False, False]
    import itertools

    best = max(
        float(mat[list(r)][:, list(c)].pow(2).sum())
        for r in itertools.combinations(range(3), 2)
        for c in itertools.combinations(range(4), 2)
    )
    assert float((mat * m).pow(2).sum()) == pytest.approx(best)
    # the regulariser: one auxiliary per constraint, Z on the intersection of their supports
    ls = memristor_levels(DeviceSpec(levels=4), 1)
    reg = ADMMRegularizer(model, {"0": [(rows, 2), (cols, 2)]}, {"0": ls}, rho=0.5)
    y0, y1 = reg.Y[("0", 0)], reg.Y[("0", 1)]
    assert set(reg.U) == {("0", 0), ("0", 1)}
    support = (y0 != 0) & (y1 != 0)
    assert torch.equal(reg.Z["0"] != 0, support)
    w = model[0].weight.detach()
    want = 0.25 * ((w - y0).pow(2).sum() + (w - y1).pow(2).sum() + (w - reg.Z["0"]).pow(2).sum())
    assert torch.allclose(reg(model, 0.0), want)


def test_alpha_allocation_and_bad_budgets():
    from xbarprune.models import build_model

    m = build_model("lenet5-caffe", seed=0)
    lay = map_model(m, CrossbarSpec(32, 32))
    names = ["features.conv1", "features.conv2"]
    kinds = dict.fromkeys(names, "filter")
    a = allocate_alpha(m, lay, names, kinds, ADMMParams(compression=10.0))
    assert a == {"features.conv1": 2, "features.conv2": 5}
    a = allocate_alpha(
        m, lay, names, kinds, ADMMParams(alpha={"features.conv1": 3}, keep={"features.conv2": 0.5})
    )
    assert a == {"features.conv1": 3, "features.conv2": 25}
    g = allocate_alpha(m, lay, names, kinds, ADMMParams(compression=10.0, allocation="global"))
    kept = 25 * g["features.conv1"] + 500 * g["features.conv2"]
    assert kept <= 2550 and min(g.values()) >= 1
    with pytest.raises(CompressionError, match="layer 'features.conv1'.*larger than its 20"):
        allocate_alpha(m, lay, names, kinds, ADMMParams(alpha={"features.conv1": 21}))


def test_params_from_config_and_bad_values():
    p = from_dict(
        ADMMParams,
        {
            "kind": "shape",
            "alpha": {"features.conv1": 3},
            "layer_kinds": {"features.conv1": "filter"},
        },
        "method.params",
    )
    assert p.alpha == {"features.conv1": 3} and p.layer_kinds["features.conv1"] == "filter"
    with pytest.raises(ConfigError, match="kind"):
        from_dict(ADMMParams, {"kind": "rows"}, "method.params")
    with pytest.raises(ConfigError, match="compression"):
        from_dict(ADMMParams, {"compression": 0.5}, "method.params")
    with pytest.raises(ConfigError, match="bits"):
        from_dict(ADMMParams, {"bits": 0}, "method.params")


def test_paper_device_and_crossbar():
    assert MA2020_DEVICE.g_max == pytest.approx(1e-6) and MA2020_DEVICE.g_min == pytest.approx(1e-7)
    assert ma2020_crossbar().rows == 128 and ma2020_crossbar(lenet=True).cols == 32


# ----------------------------------------------------------------------------- tiny run
def test_tiny_admm_run_end_to_end():
    from xbarprune.compress.base import CompressContext, get_method
    from xbarprune.data import load_splits
    from xbarprune.models import build_model
    from xbarprune.training import TrainConfig

    torch.manual_seed(0)
    s = load_splits("mnist-embedded", val_size=0.1, seed=0)
    train, val = Subset(s.train, range(200)), Subset(s.val, range(100))
    model = build_model("lenet5-caffe", width=0.3, seed=0)
    xbar = CrossbarSpec(16, 16, cells_per_weight=2)
    layout = map_model(model, xbar)
    ctx = CompressContext(
        model=model,
        layout=layout,
        device_spec=DeviceSpec(levels=16),
        train_data=train,
        val_data=val,
        finetune_cfg=TrainConfig(epochs=1, batch_size=50, lr=2e-3, progress=False),
        log=lambda _: None,
    )
    cls = get_method("admm")
    params = from_dict(
        cls.Params,
        {"kind": "filter", "alpha": {"features.conv1": 2, "features.conv2": 5}, "iterations": 2},
        "method.params",
    )
    res = cls(params).compress(ctx)
    info = res.info
    w1 = model.features.conv1.weight
    w2 = model.features.conv2.weight
    assert int((w1.flatten(1) != 0).any(1).sum()) <= 2
    assert int((w2.flatten(1) != 0).any(1).sum()) <= 5
    # P-RM: conv2 reads only conv1's two live channels
    assert int((w2 != 0).any(0).any(-1).any(-1).sum()) <= 2
    ls = memristor_levels(DeviceSpec(levels=16), 2)
    for name in layout.layers:
        w = dict(model.named_modules())[name].weight.detach()
        assert on_levels(w, ls, res.masks[name])
        assert torch.equal(w != 0, res.masks[name])
    assert set(info["val_accuracy"]) >= {"dense", "admm", "admm+prm", "admm+prm+quant"}
    # conv weights 6*25 + 15*6*25 = 2400 -> 2*25 + 5*6*25 = 800 (3x) after ADMM and
    # 2*25 + 5*2*25 = 300 (8x) after P-RM
    assert info["compression"]["admm"]["compression_conv"] == pytest.approx(3.0)
    assert info["compression"]["admm+prm"]["compression_conv"] >= 8.0
    upr = info["unused_path_removal"]
    assert upr["max_abs_diff"] < 1e-4
    assert upr["tiles"]["removed_dense"] == upr["tiles"]["masked_compacted"]
    assert res.layout is not None and res.layout.n_tiles == info["tiles"]["packed"]
    assert res.layout.n_tiles < layout.dense_tiles


def test_unknown_layer_in_params_is_refused():
    from xbarprune.compress.methods.admm import prunable_layers
    from xbarprune.models import build_model

    lay = map_model(build_model("lenet5-caffe", seed=0), CrossbarSpec(32, 32))
    with pytest.raises(CompressionError, match="conv9"):
        prunable_layers(lay, ADMMParams(alpha={"conv9": 2}))
    assert prunable_layers(lay, ADMMParams()) == ["features.conv1", "features.conv2"]
    assert len(prunable_layers(lay, ADMMParams(layers="all"))) == 4


def test_weight_matrix_helper_consistency():
    # the Q projection acts elementwise, so matrix and weight views agree
    w = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    ls = memristor_levels(DeviceSpec(levels=8), 1)
    assert torch.equal(
        weight_to_matrix(project_levels(w, ls)), project_levels(weight_to_matrix(w), ls)
    )
