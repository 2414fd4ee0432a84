"""Models with trained-looking BatchNorm statistics, deployed float and int8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedhar.models import build_model

CHANNELS, CLASSES, WINDOW = 6, 5, 64


def warmed(name: str, seed: int = 0) -> nn.Module:
    """A model whose BatchNorm statistics and weights are not the initial ones."""
    torch.manual_seed(seed)
    model = build_model(name, CHANNELS, CLASSES)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
        model.train()
        for _ in range(3):
            model(torch.randn(32, CHANNELS, WINDOW) * 2 + 0.5)
    return model.eval()


@pytest.fixture
def stream() -> np.ndarray:
    """Ten seconds of a six-channel 50 Hz recording.  # (C, L)"""
    t = np.arange(500) / 50
    rng = np.random.default_rng(0)
    waves = np.sin(2 * np.pi * t[None, :] * rng.uniform(0.5, 3, (CHANNELS, 1)))
    return (waves + 0.3 * rng.standard_normal((CHANNELS, len(t)))).astype(np.float32)
