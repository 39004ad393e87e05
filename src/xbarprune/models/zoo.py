"""The model zoo: LeNet-5 (classic and Caffe), MLP, VGG-11/16 and ResNet-20 for CIFAR, and a
small VGG for 28 x 28 inputs.

Every model is built only from ``nn.Conv2d`` (``groups=1``), ``nn.Linear``, ``nn.BatchNorm2d``,
``nn.ReLU`` (as modules, not in-place), ``nn.MaxPool2d``, ``nn.AdaptiveAvgPool2d``,
``nn.Flatten`` and ``nn.Sequential`` containers, so that every Conv2d/Linear maps onto crossbars
and the graph traces cleanly for Torch-Pruning. The only functional operation is the residual
addition in :class:`BasicBlock`. Layers have readable names (``features.conv1``,
``classifier.fc1``, ``layer2.0.conv1``...) so that reports can name them.

``width`` multiplies every hidden channel count and hidden fully connected size (rounded,
at least 1); the input channels and the number of classes are never scaled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from xbarprune.errors import ConfigError
from xbarprune.models.catalog import register_model

__all__ = [
    "LeNet5",
    "LeNet5Caffe",
    "MLP",
    "VGG",
    "VGGSmall",
    "BasicBlock",
    "ResNetCifar",
    "VGG_CONFIGS",
]


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _check_size(model: str, size: int, minimum: int, hint: str = "") -> None:
    if size < minimum:
        raise ConfigError(
            f"{model} needs image_size >= {minimum}, got {size}" + (f"; {hint}" if hint else "")
        )


def _classifier(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    prev = in_features
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(prev, h)), (f"relu{i}", nn.ReLU())]
        prev = h
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(prev, num_classes)))
    return nn.Sequential(OrderedDict(layers))


class _Classifier(nn.Module):
    """Common attributes and forward: ``classifier(pool(features(x)))``."""

    features: nn.Module
    classifier: nn.Module

    def _set_meta(self, num_classes: int, in_channels: int, image_size: int) -> None:
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(_Classifier):
    """Classic LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling.

    conv 6@5x5 - pool 2 - conv 16@5x5 - pool 2 - fc 120 - fc 84 - fc num_classes.
    The first convolution is zero-padded by 2 for inputs smaller than 32 px (so 28 x 28 MNIST
    gives the original 28 -> 14 -> 10 -> 5 geometry) and unpadded for 32 x 32 and larger;
    ``padding`` overrides this.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: float = 1.0,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        self._set_meta(num_classes, in_channels, image_size)
        pad = (2 if image_size < 32 else 0) if padding is None else int(padding)
        c1, c2 = _scaled(6, width), _scaled(16, width)
        if pad < 0:
            raise ConfigError(f"lenet5: padding = {pad}; allowed: >= 0")
        _check_size("lenet5", image_size, 16 - 2 * pad, f"with padding {pad}")
        s = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, c1, 5, padding=pad)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(c1, c2, 5)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                ]
            )
        )
        hidden = (_scaled(120, width), _scaled(84, width))
        self.classifier = _classifier(c2 * s * s, hidden, num_classes)


class LeNet5Caffe(_Classifier):
    """LeNet-5 as in Caffe's ``examples/mnist/lenet.prototxt`` (the "LeNet-5" of Han et al.
    2015 and many pruning papers): conv 20@5x5 - pool - conv 50@5x5 - pool - fc 500 - ReLU -
    fc num_classes, no padding. With one input channel the convolutions hold exactly
    20*25 + 50*20*25 = 25,500 weights and the whole net 430,500 weights (+ biases).

    As in Caffe there is no ReLU after the convolutions; ``conv_relu=True`` adds one.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: float = 1.0,
        conv_relu: bool = False,
    ) -> None:
        super().__init__()
        self._set_meta(num_classes, in_channels, image_size)
        _check_size("lenet5-caffe", image_size, 16)
        c1, c2 = _scaled(20, width), _scaled(50, width)
        s = ((image_size - 4) // 2 - 4) // 2
        layers: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(in_channels, c1, 5))]
        if conv_relu:
            layers.append(("relu1", nn.ReLU()))
        layers += [("pool1", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(c1, c2, 5))]
        if conv_relu:
            layers.append(("relu2", nn.ReLU()))
        layers.append(("pool2", nn.MaxPool2d(2)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = _classifier(c2 * s * s, (_scaled(500, width),), num_classes)


class MLP(_Classifier):
    """Fully connected network: flatten - [fc - ReLU] x len(hidden) - fc num_classes.

    ``hidden`` defaults to (300, 100), i.e. LeNet-300-100 (784-300-100-10 on MNIST).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: float = 1.0,
        hidden: Sequence[int] = (300, 100),
    ) -> None:
        super().__init__()
        self._set_meta(num_classes, in_channels, image_size)
        try:
            sizes = tuple(int(h) for h in hidden)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mlp: hidden must be a list of integers, got {hidden!r}") from exc
        if any(h < 1 for h in sizes):
            raise ConfigError(f"mlp: hidden sizes must be >= 1, got {list(sizes)}")
        self.features = nn.Sequential()  # empty: returns its input
        self.classifier = _classifier(
            in_channels * image_size * image_size,
            tuple(_scaled(h, width) for h in sizes),
            num_classes,
        )


#: VGG convolution configurations (Simonyan & Zisserman 2015): ints are 3x3 conv channel
#: counts, "M" a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ),  # fmt: skip
    "vgg-small": (32, 32, "M", 64, 64, "M"),
}


def _vgg_features(
    cfg: Sequence[int | str], in_channels: int, width: float, batch_norm: bool
) -> tuple[nn.Sequential, int]:
    layers: list[tuple[str, nn.Module]] = []
    prev, conv_i, pool_i = in_channels, 0, 0
    for item in cfg:
        if item == "M":
            pool_i += 1
            layers.append((f"pool{pool_i}", nn.MaxPool2d(2)))
            continue
        conv_i += 1
        out = _scaled(int(item), width)
        layers.append((f"conv{conv_i}", nn.Conv2d(prev, out, 3, padding=1, bias=not batch_norm)))
        if batch_norm:
            layers.append((f"bn{conv_i}", nn.BatchNorm2d(out)))
        layers.append((f"relu{conv_i}", nn.ReLU()))
        prev = out
    return nn.Sequential(OrderedDict(layers)), prev


def _init_conv_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VGG(_Classifier):
    """VGG-11/13/16 for CIFAR-style 32 x 32 inputs (as in most CIFAR pruning work).

    3x3 convolutions (padding 1) with optional BatchNorm, five 2x2 max-pools, a global
    ``AdaptiveAvgPool2d(1)`` (a no-op at 32 px, so larger inputs also work), then a classifier:
    one ``Linear(512*width, num_classes)`` by default, or hidden fully connected layers of the
    sizes in ``classifier_hidden`` (e.g. ``(512, 512)`` for the three-layer head).
    """

    def __init__(
        self,
        variant: str = "vgg16",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width: float = 1.0,
        batch_norm: bool = True,
        classifier_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if variant not in VGG_CONFIGS or variant == "vgg-small":
            raise ConfigError(f"unknown VGG variant {variant!r}; use vgg11, vgg13 or vgg16")
        self._set_meta(num_classes, in_channels, image_size)
        self.variant = variant
        _check_size(variant, image_size, 32, "pad 28 x 28 inputs with pad_to=32")
        self.features, out = _vgg_features(VGG_CONFIGS[variant], in_channels, width, batch_norm)
        self.features.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
        hidden = tuple(_scaled(int(h), width) for h in classifier_hidden)
        self.classifier = _classifier(out, hidden, num_classes)
        _init_conv_bn(self)


class VGGSmall(_Classifier):
    """Small VGG for 28 x 28 inputs: conv 32 - conv 32 - pool - conv 64 - conv 64 - pool -
    fc 128 - fc num_classes (3x3 convolutions, padding 1; BatchNorm optional, off by default).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: float = 1.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self._set_meta(num_classes, in_channels, image_size)
        _check_size("vgg-small", image_size, 4)
        self.features, out = _vgg_features(VGG_CONFIGS["vgg-small"], in_channels, width, batch_norm)
        s = image_size // 4
        self.classifier = _classifier(out * s * s, (_scaled(128, width),), num_classes)
        _init_conv_bn(self)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    The shortcut is the identity (an empty ``nn.Sequential``) when the shape is unchanged and
    a 1x1 convolution with BatchNorm (He et al. 2016, option B) when the stride or the channel
    count changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)),
                        ("bn", nn.BatchNorm2d(planes)),
                    ]
                )
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of He et al. 2016 (sec. 4.2): a 3x3 conv stem of 16 channels, three stages
    of ``blocks_per_stage`` basic blocks with 16, 32, 64 channels (x width) and strides 1, 2,
    2, global average pooling and one Linear layer. ``blocks_per_stage=3`` is ResNet-20
    (6n + 2 = 20 layers). Shortcuts use option B (1x1 conv + BN where the shape changes), so
    every layer is an ordinary Conv2d. Works for any input channels and sizes >= 4.
    """

    # the stages, registered by name in __init__ (add_module)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width: float = 1.0,
        blocks_per_stage: int = 3,
    ) -> None:
        super().__init__()
        if int(blocks_per_stage) != blocks_per_stage or blocks_per_stage < 1:
            raise ConfigError(f"blocks_per_stage = {blocks_per_stage!r}; allowed: integer >= 1")
        _check_size("resnet", image_size, 4)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu1 = nn.ReLU()
        prev = widths[0]
        stages = []
        for i, (w, stride) in enumerate(zip(widths, (1, 2, 2), strict=True)):
            blocks = []
            for b in range(int(blocks_per_stage)):
                blocks.append(BasicBlock(prev, w, stride if b == 0 else 1))
                prev = w
            stages.append(nn.Sequential(*blocks))
            self.add_module(f"layer{i + 1}", stages[-1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


# ---------------------------------------------------------------------------------------------
# registry entries


@register_model("lenet5", "LeNet-5 (LeCun 1998): conv 6-16 (5x5), fc 120-84, ReLU, max-pool")
def _lenet5(
    *, num_classes: int, in_channels: int, image_size: int, width: float, padding: int | None = None
) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size, width, padding=padding)


@register_model(
    "lenet5-caffe", "Caffe LeNet: conv 20-50 (5x5, 25,500 conv weights), fc 500; Han et al. 2015"
)
def _lenet5_caffe(
    *, num_classes: int, in_channels: int, image_size: int, width: float, conv_relu: bool = False
) -> nn.Module:
    return LeNet5Caffe(num_classes, in_channels, image_size, width, conv_relu=conv_relu)


@register_model("mlp", "multilayer perceptron, hidden sizes as option (default 300-100)")
def _mlp(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: float,
    hidden: Sequence[int] = (300, 100),
) -> nn.Module:
    return MLP(num_classes, in_channels, image_size, width, hidden=hidden)


def _vgg_builder(arch: str):
    def build(
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        width: float,
        batch_norm: bool = True,
        classifier_hidden: Sequence[int] = (),
    ) -> nn.Module:
        return VGG(arch, num_classes, in_channels, image_size, width, batch_norm, classifier_hidden)

    return build


for _arch in ("vgg11", "vgg13", "vgg16"):
    register_model(_arch, f"VGG-{_arch[3:]} for 32x32 inputs (CIFAR), BatchNorm by default, 1 fc")(
        _vgg_builder(_arch)
    )


@register_model("vgg-small", "small VGG for 28x28: conv 32-32-pool-64-64-pool, fc 128")
def _vgg_small(
    *, num_classes: int, in_channels: int, image_size: int, width: float, batch_norm: bool = False
) -> nn.Module:
    return VGGSmall(num_classes, in_channels, image_size, width, batch_norm=batch_norm)


@register_model("resnet20", "ResNet-20 for CIFAR (He 2016): 3x3 blocks, 16-32-64, option-B")
def _resnet20(
    *, num_classes: int, in_channels: int, image_size: int, width: float, blocks_per_stage: int = 3
) -> nn.Module:
    return ResNetCifar(num_classes, in_channels, image_size, width, blocks_per_stage)
