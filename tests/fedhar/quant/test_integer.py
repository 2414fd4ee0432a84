"""Simulated int8 inference of a trained model stays close to its float scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhar.models import build_model
from fedhar.quant.integer import evaluate_integer
from fedhar.train import TrainConfig, evaluate, train_local


def test_int8_inference_tracks_float_and_needs_calibration() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(0, 0.2, (300, 6, 64)).astype(np.float32)
    x[:, 0] += y[:, None] * 0.8  # learnable: class shifts the first channel
    torch.manual_seed(0)
    model = build_model("microbi_convlstm", 6, 3)
    train_local(model, x[:200], y[:200], TrainConfig(epochs=4, batch_size=16, lr=0.05), seed=0)
    float_f1 = evaluate(model, x[200:], y[200:], 3).macro_f1
    int8 = evaluate_integer(model, x[:200], x[200:], y[200:], 3, bits=8)
    assert float_f1 > 0.8
    assert abs(int8.macro_f1 - float_f1) < 0.05
    with pytest.raises(ValueError, match="calibration windows"):
        evaluate_integer(model, x[:0], x[200:], y[200:], 3)
