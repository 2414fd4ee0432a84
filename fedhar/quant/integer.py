"""Simulated integer inference of a trained float model, scored like the float model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedhar.quant.qat import QuantConfig, calibrate, prepare_qat
from fedhar.train import EvalResult, evaluate


def evaluate_integer(
    model: nn.Module,
    calibration_x: np.ndarray,  # (M, C, T) windows the observers see, e.g. training windows
    x: np.ndarray,  # (N, C, T)
    y: np.ndarray,  # (N,)
    num_classes: int,
    bits: int = 8,
) -> EvalResult:
    """Scores of ``model`` run with ``bits``-bit weights (per channel) and activations (per
    tensor), after calibrating the activation ranges on ``calibration_x``.

    The fake-quantized forward is the integer pipeline's (``fedhar.quant.qat.integer_forward``
    matches it within one quantization step), so these are the device's int8 scores.
    """
    if len(calibration_x) == 0:
        raise ValueError("evaluate_integer needs calibration windows to set activation ranges")
    config = QuantConfig(bits, bits, qas=False, observer_momentum=None)
    quantized = prepare_qat(model, config)
    calibrate(quantized, [torch.from_numpy(np.ascontiguousarray(calibration_x))])
    return evaluate(quantized, x, y, num_classes)
