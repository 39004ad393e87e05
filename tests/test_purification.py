"""Network Purification (eqs. 8-9) and Unused Path Removal (Ma et al. 2020): hand-built η/σ,
purification on a small net, physical removal on LeNet-5, VGG-11 and ResNet-20 (residual)
with outputs and crossbar counts equal to the masked model's, and models that cannot be traced."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xbarprune.compress.parts.purification import (
    channel_scores,
    mask_unused_paths,
    network_purification,
    remove_unused_paths,
)
from xbarprune.errors import CompressionError
from xbarprune.hardware import CrossbarSpec
from xbarprune.mapping import map_model, weight_to_matrix
from xbarprune.mapping.permute import pack_layout
from xbarprune.models import build_model

XBAR = CrossbarSpec(16, 16)  # 8 weights per tile row: small enough that removal frees tiles


# ----------------------------------------------------------------------------- eqs. (8), (9)
def test_eta_sigma_hand_built_layer():
    w = torch.zeros(2, 3, 2, 2)  # 2 filters, 3 channels, delta = 4 rows per channel
    w[:, 0] = 1.0  # every row energy 2
    w[0, 1, 0, 0], w[1, 1, 0, 0] = 3.0, 4.0  # one row of energy 25
    w[0, 2, 1, 1] = 0.1  # one row of energy 0.01 (below Th1 = 0.05)
    mat = weight_to_matrix(w)
    eta, sigma = channel_scores(mat, 4, th1=0.05)
    assert eta.tolist() == pytest.approx([1.0, 0.25, 0.0])
    assert sigma.tolist() == pytest.approx([2.0, 6.25, 0.0025])
    eta0, _ = channel_scores(mat, 4, th1=0.0)
    assert eta0.tolist() == pytest.approx([1.0, 0.25, 0.25])
    with pytest.raises(CompressionError, match="whole number of channels"):
        channel_scores(mat, 5)


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x))))))


def test_network_purification_prunes_weak_channel_and_filter_with_their_partners():
    torch.manual_seed(0)
    m = _Small().eval()
    with torch.no_grad():
        m.conv2.weight[:, 2] *= 1e-3  # channel 2 of conv2: eta = 0 (rows below Th1), sigma tiny
        m.conv2.weight[3] *= 1e-3  # filter 3 of conv2: energy below Th4
        m.conv2.bias[3] = 0.2  # its constant output relu(0.2) must be folded into fc
    x = torch.randn(2, 1, 8, 8)
    res = network_purification(m, x)
    pruned = {(c["layer"], c["channel"]) for c in res.report["pruned_channels"]}
    assert ("conv2", 2) in pruned
    assert {(f["layer"], f["filter"]) for f in res.report["pruned_filters"]} >= {("conv2", 3)}
    # the producer of the pruned channel and the consumer rows of the pruned filter follow
    assert not res.masks["conv1"][2].any() and res.masks["conv1"][[0, 1]].all()
    assert not res.masks["fc"][:, 48:64].any()
    assert not res.masks["conv2"][:, 2].any() and not res.masks["conv2"][3].any()
    # fc bias absorbed relu(0.2) * sum of the dropped fc weights: outputs change only by the
    # removed tiny weights
    torch.manual_seed(0)
    ref = _Small().eval()
    with torch.no_grad():
        ref.conv2.weight[:, 2] = 0
        ref.conv2.weight[3] = 0
        ref.conv2.bias[3] = 0.2
    assert torch.allclose(m(x), ref(x), atol=1e-5)
    assert res.report["unused_paths"]["max_abs_diff"] < 1e-5


# ----------------------------------------------------------------------------- helpers
def _random_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _set_bn(bn: nn.BatchNorm2d, ch, shift: float) -> None:
    """Make BN's output for a zero input equal ``shift`` in channels ``ch``."""
    with torch.no_grad():
        bn.running_mean[ch] = 0.0
        bn.bias[ch] = shift


def _check_upr(masked: nn.Module, x: torch.Tensor) -> tuple[nn.Module, dict]:
    masked.eval()
    before = copy.deepcopy(masked.state_dict())
    small, rep = remove_unused_paths(masked, x, crossbar=XBAR)
    for k, v in masked.state_dict().items():  # the masked model is not touched
        assert torch.equal(v, before[k])
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-5, rtol=1e-5)
        x2 = torch.randn_like(x)  # not only on the example the constants were measured on
        assert torch.allclose(small(x2), masked(x2), atol=1e-5, rtol=1e-5)
    assert rep["max_abs_diff"] < 1e-5
    # crossbar count of the smaller model's dense layout = the masked model's compacted count
    folded = copy.deepcopy(masked)
    mask_unused_paths(folded, x)
    compacted = pack_layout(map_model(folded, XBAR), folded, "weight").n_tiles
    dense_small = map_model(small, XBAR).dense_tiles
    assert dense_small == compacted == rep["tiles"]["removed_dense"]
    assert rep["tiles"]["masked_compacted"] == compacted
    assert dense_small < map_model(masked, XBAR).dense_tiles
    assert not hasattr(small, "build_spec")
    return small, rep


# ----------------------------------------------------------------------------- UPR
def test_upr_lenet5_folds_constants_and_matches_the_masked_model():
    m = build_model("lenet5", seed=0).eval()
    with torch.no_grad():
        m.features.conv1.weight[[1, 4]] = 0
        m.features.conv1.bias[[1, 4]] = torch.tensor([0.3, 0.2])  # relu > 0: folded into conv2
        m.features.conv2.weight[[3, 7]] = 0
        m.features.conv2.bias[[3, 7]] = -0.1  # relu -> 0
        m.classifier.fc1.weight[5] = 0
        m.classifier.fc1.bias[5] = 0.4  # folded into fc2's bias
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    small, rep = _check_upr(m, x)
    assert list(small.features.conv1.weight.shape) == [4, 1, 5, 5]
    assert list(small.features.conv2.weight.shape) == [14, 4, 5, 5]
    assert list(small.classifier.fc1.weight.shape) == [119, 14 * 25]
    assert list(small.classifier.fc2.weight.shape) == [84, 119]
    assert rep["kept_constant"] == []
    assert rep["folded"]["features.conv1"] == 2 and rep["folded"]["classifier.fc1"] == 1


def test_upr_vgg11_batchnorm_constants():
    m = build_model("vgg11", in_channels=3, image_size=32, width=0.25, seed=0).eval()
    _random_bn(m)
    f = m.features
    with torch.no_grad():
        f.conv2.weight[[0, 1]] = 0
        _set_bn(f.bn2, [0, 1], -1.0)  # BN output -1 -> ReLU 0: a truly blank map
        f.conv8.weight[5] = 0
        _set_bn(f.bn8, 5, 0.7)  # constant 0.7 through pool/avgpool/flatten: folded into fc
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    small, rep = _check_upr(m, x)
    assert small.features.conv2.out_channels == 30 and small.features.conv3.in_channels == 30
    assert small.features.bn2.num_features == 30
    assert small.features.conv8.out_channels == 127 and small.classifier.fc1.in_features == 127


def test_upr_keeps_a_constant_that_cannot_be_folded():
    m = build_model("vgg11", in_channels=3, image_size=32, width=0.25, seed=0).eval()
    _random_bn(m)
    with torch.no_grad():
        m.features.conv3.weight[2] = 0
        _set_bn(m.features.bn3, 2, 0.5)  # relu(0.5) into a zero-padded 3x3 conv: not a bias
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    small, rep = remove_unused_paths(m, x, crossbar=XBAR)
    assert small.features.conv3.out_channels == m.features.conv3.out_channels
    assert rep["kept_constant"][0]["group"] == "features.conv3"
    assert "zero-padded" in rep["kept_constant"][0]["reason"]
    with torch.no_grad():
        assert torch.allclose(small(x), m(x), atol=1e-5)


def test_upr_resnet20_residual_channel():
    m = build_model("resnet20", in_channels=3, image_size=32, width=0.5, seed=0).eval()
    _random_bn(m)
    with torch.no_grad():
        # channel 3 of the first stage: every producer of the residual sum is dead
        m.conv1.weight[3] = 0
        _set_bn(m.bn1, 3, -1.0)
        for blk in m.layer1:
            blk.conv2.weight[3] = 0
            _set_bn(blk.bn2, 3, -0.5)
        # an inner channel of a block
        m.layer2[1].conv1.weight[5] = 0
        _set_bn(m.layer2[1].bn1, 5, -0.3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    small, rep = _check_upr(m, x)
    assert small.conv1.out_channels == 7 and small.bn1.num_features == 7
    for blk in small.layer1:
        assert blk.conv1.in_channels == 7 and blk.conv2.out_channels == 7
    assert small.layer2[0].shortcut.conv.in_channels == 7
    assert small.layer2[1].conv1.out_channels == 15 and small.layer2[1].conv2.in_channels == 15


def test_upr_residual_channel_with_a_live_partner_is_kept():
    m = build_model("resnet20", in_channels=3, image_size=32, width=0.5, seed=0).eval()
    _random_bn(m)
    with torch.no_grad():
        m.layer3[0].conv2.weight[1] = 0  # the shortcut still carries channel 1
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    small, rep = remove_unused_paths(m, x)
    assert small.layer3[0].conv2.out_channels == 32 and rep["removed"] == {}
    with torch.no_grad():
        assert torch.allclose(small(x), m(x), atol=1e-5)


def test_mask_unused_paths_is_exact_and_in_place():
    m = build_model("lenet5", seed=0).eval()
    with torch.no_grad():
        m.features.conv1.weight[2] = 0
        m.features.conv1.bias[2] = 0.5
        m.classifier.fc2.weight[:, 7] = 0  # nobody reads fc1's neuron 7
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        y0 = m(x)
    rep = mask_unused_paths(m, x)
    with torch.no_grad():
        assert torch.allclose(m(x), y0, atol=1e-5)
    assert not m.features.conv2.weight[:, 2].any()  # consumer rows dropped, constant folded
    assert not m.classifier.fc1.weight[7].any()  # producer of an unused channel zeroed
    assert rep["folded"] == {"features.conv1": 1} and rep["zeroed_filters"] == {"classifier.fc1": 1}


# ----------------------------------------------------------------------------- bad models
class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return F.linear(self.body(x), self.head.weight, self.head.bias)


class _NotATensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).sum().item()


def test_models_torch_pruning_cannot_trace_give_clear_errors():
    x = torch.randn(2, 4)
    with pytest.raises(CompressionError, match="'head'.*not seen by Torch-Pruning"):
        remove_unused_paths(_Functional(), x)
    with pytest.raises(CompressionError, match="Torch-Pruning cannot trace the model _NotATensor"):
        remove_unused_paths(_NotATensor(), x)
    with pytest.raises(CompressionError, match="cannot trace"):
        network_purification(build_model("lenet5", seed=0), torch.randn(2, 1, 5, 5))
