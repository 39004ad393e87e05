"""Simulated inference on non-ideal crossbars: analog layers, conversion, Monte Carlo."""

from xbarprune.analog.batchnorm import BNCalibration, BNCalibrationConfig
from xbarprune.analog.layers import AnalogLayer
from xbarprune.analog.simulate import (
    AnalogModel,
    EvalResult,
    accuracy,
    convert,
    evaluate,
    trial_generator,
)

__all__ = [
    "AnalogLayer",
    "AnalogModel",
    "BNCalibration",
    "BNCalibrationConfig",
    "EvalResult",
    "accuracy",
    "convert",
    "evaluate",
    "trial_generator",
]
