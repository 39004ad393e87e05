"""Model zoo: shapes, layer counts, width multiplier, registry, import paths, traceability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xbarprune.errors import ConfigError, XbarpruneError
from xbarprune.models import build_model, list_models

ALLOWED = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Sequential,
)

# (name, in_channels, image_size, extra kwargs)
CASES = [
    ("lenet5", 1, 28, {}),
    ("lenet5", 3, 32, {}),
    ("lenet5-caffe", 1, 28, {}),
    ("lenet5-caffe", 3, 32, {}),
    ("mlp", 1, 28, {}),
    ("mlp", 3, 32, {"hidden": (500, 500)}),
    ("vgg11", 3, 32, {}),
    ("vgg11", 1, 32, {"batch_norm": False}),
    ("vgg16", 3, 32, {"classifier_hidden": (512, 512)}),
    ("vgg16", 1, 32, {}),
    ("vgg-small", 1, 28, {}),
    ("vgg-small", 3, 32, {"batch_norm": True}),
    ("resnet20", 3, 32, {}),
    ("resnet20", 1, 28, {}),
]


def _weights(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, kind))


@pytest.mark.parametrize(("name", "channels", "size", "kwargs"), CASES)
def test_output_shape_and_plain_layers(name, channels, size, kwargs):
    model = build_model(
        name, num_classes=7, in_channels=channels, image_size=size, seed=0, **kwargs
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7)
    for m in model.modules():
        if not isinstance(m, ALLOWED) and m is not model:
            assert type(m).__name__ == "BasicBlock", f"unexpected module {type(m)}"
        if isinstance(m, nn.Conv2d):
            assert m.groups == 1
        if isinstance(m, nn.ReLU):
            assert not m.inplace


def test_lenet5_caffe_weight_counts():
    model = build_model("lenet5-caffe")
    assert _weights(model, nn.Conv2d) == 25_500 == 20 * 25 + 50 * 20 * 25
    assert _weights(model, nn.Linear) == 800 * 500 + 500 * 10
    assert not any(isinstance(m, nn.ReLU) for m in model.features)
    with_relu = build_model("lenet5-caffe", conv_relu=True)
    assert sum(isinstance(m, nn.ReLU) for m in with_relu.features) == 2


def test_lenet5_is_classic():
    model = build_model("lenet5")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [6, 16]
    assert convs[0].padding == (2, 2)
    assert [f.out_features for f in fcs] == [120, 84, 10]
    assert fcs[0].in_features == 16 * 5 * 5
    assert sum(p.numel() for p in model.parameters()) == 61_706
    assert build_model("lenet5", image_size=32).features.conv1.padding == (0, 0)


def test_mlp_hidden_sizes():
    assert [m.out_features for m in build_model("mlp").modules() if isinstance(m, nn.Linear)] == [
        300,
        100,
        10,
    ]
    m = build_model("mlp", hidden=(500, 500))
    assert [f.in_features for f in m.modules() if isinstance(f, nn.Linear)] == [784, 500, 500]


def test_width_multiplier_scales_channels():
    def convs(name, **kw):
        return [
            m.out_channels for m in build_model(name, **kw).modules() if isinstance(m, nn.Conv2d)
        ]

    assert convs("lenet5", width=2.0) == [12, 32]
    assert convs("vgg11", in_channels=3, image_size=32, width=0.5)[:3] == [32, 64, 128]
    assert convs("vgg-small", width=0.25) == [8, 8, 16, 16]
    res = build_model("resnet20", in_channels=3, image_size=32, width=2.0)
    assert res.conv1.out_channels == 32 and res.fc.in_features == 128
    fcs = [
        m.out_features
        for m in build_model("lenet5", width=0.5).modules()
        if isinstance(m, nn.Linear)
    ]
    assert fcs == [60, 42, 10]  # hidden sizes scale, the output never does


def test_resnet20_structure_option_b():
    model = build_model("resnet20", in_channels=3, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    shortcuts = [m for n, m in model.named_modules() if n.endswith("shortcut.conv")]
    assert len(convs) - len(shortcuts) == 19  # 19 conv layers + 1 fc = ResNet-20
    assert len(shortcuts) == 2 and all(s.kernel_size == (1, 1) for s in shortcuts)
    assert [model.layer1[0].conv1.out_channels, model.layer3[0].conv1.out_channels] == [16, 64]
    assert len(model.layer2) == 3


def test_vgg_needs_32_pixels():
    with pytest.raises(ConfigError, match="pad_to=32"):
        build_model("vgg11", image_size=28)


def test_seed_is_reproducible_and_leaves_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model("lenet5", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model("lenet5", seed=5)
    c = build_model("lenet5", seed=6)
    assert torch.equal(a.features.conv1.weight, b.features.conv1.weight)
    assert not torch.equal(a.features.conv1.weight, c.features.conv1.weight)
    assert a.build_spec["name"] == "lenet5" and a.build_spec["seed"] == 5


def test_list_models_and_unknown_name():
    names = list_models()
    for n in ("lenet5", "lenet5-caffe", "mlp", "vgg11", "vgg16", "vgg-small", "resnet20"):
        assert n in names and names[n]
    with pytest.raises(ConfigError) as exc:
        build_model("alexnet")
    for n in names:
        assert n in str(exc.value)


def test_unknown_option_and_bad_arguments():
    with pytest.raises(ConfigError, match="batch_norm"):
        build_model("lenet5", batch_norm=True)
    with pytest.raises(ConfigError):
        build_model("lenet5", num_classes=0)
    with pytest.raises(ConfigError):
        build_model("lenet5", width=0)
    with pytest.raises(ConfigError):
        build_model("lenet5-caffe", image_size=8)


def test_import_path_models():
    ident = build_model("import:torch.nn:Identity")
    assert isinstance(ident, nn.Identity)
    lin = build_model("torch.nn:Linear", in_features=4, out_features=2)
    assert isinstance(lin, nn.Linear) and lin.out_features == 2
    # a factory whose signature names standard arguments receives them
    model = build_model("import:xbarprune.models.zoo:LeNet5", num_classes=3, image_size=32)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize(
    "target",
    [
        "import:no_such_module_xyz:Net",
        "import:torch.nn:NoSuchClass",
        "import:collections:OrderedDict",  # callable, but not an nn.Module
        "import:torch.nn",  # no attribute part
        "import:math:pi",  # not callable
    ],
)
def test_import_path_errors(target):
    with pytest.raises(ConfigError) as exc:
        build_model(target)
    assert isinstance(exc.value, XbarpruneError)


@pytest.mark.parametrize(("name", "channels", "size"), [(c[0], c[1], c[2]) for c in CASES[::2]])
def test_fx_traceable(name, channels, size):
    model = build_model(name, in_channels=channels, image_size=size, seed=0).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_torch_pruning_removes_channels():
    tp = pytest.importorskip("torch_pruning")
    for name, channels, size in (("resnet20", 3, 32), ("vgg-small", 1, 28)):
        model = build_model(name, in_channels=channels, image_size=size, seed=0)
        example = torch.randn(2, channels, size, size)
        head = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
        pruner = tp.pruner.MagnitudePruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=head,
        )
        before = sum(p.numel() for p in model.parameters())
        pruner.step()
        assert sum(p.numel() for p in model.parameters()) < before / 2
        assert model(example).shape == (2, 10)
