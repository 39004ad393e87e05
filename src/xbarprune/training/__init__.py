"""Training loop shared by the pipeline and the compression methods."""

from xbarprune.training.loop import TrainConfig, TrainHistory, make_optimizer, train
from xbarprune.training.masks import MaskSet

__all__ = ["MaskSet", "TrainConfig", "TrainHistory", "make_optimizer", "train"]
