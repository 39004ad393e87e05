"""Model zoo (DESIGN.md `models/`): LeNet-5 (classic and Caffe), MLP, VGG-11/13/16 and
ResNet-20 for CIFAR, a small VGG for 28 x 28 inputs, and user models by import path.

>>> from xbarprune.models import build_model, list_models
>>> model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
"""

from xbarprune.models.registry import IMPORT_PREFIX, build_model, list_models, register_model
from xbarprune.models.zoo import (
    MLP,
    VGG,
    VGG_CONFIGS,
    BasicBlock,
    LeNet5,
    LeNet5Caffe,
    ResNetCifar,
    VGGSmall,
)

__all__ = [
    "IMPORT_PREFIX",
    "MLP",
    "VGG",
    "VGG_CONFIGS",
    "BasicBlock",
    "LeNet5",
    "LeNet5Caffe",
    "ResNetCifar",
    "VGGSmall",
    "build_model",
    "list_models",
    "register_model",
]
