"""Tiny width-scalable HAR models, plus parameter and MAC counting.

Every model takes ``(B, C, T)`` float32 windows and returns ``(B, K)`` logits, ends in a Linear
named ``head``, never flattens over time, and scales hidden sizes as ``ceil(base * width)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedhar.models.deepconvlstm import DeepConvLSTM
from fedhar.models.dscnn import DSCNN
from fedhar.models.microbi_convlstm import MicroBiConvLSTM
from fedhar.models.ops import dummy_forward, layer_macs

_MODELS: dict[str, type[nn.Module]] = {
    "microbi_convlstm": MicroBiConvLSTM,
    "dscnn": DSCNN,
    "deepconvlstm": DeepConvLSTM,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)
# BatchNorm's step counter: a state entry but not a weight (and a float after Flower's FedAvg)
STEP_COUNTER = "num_batches_tracked"

__all__ = ["MODEL_NAMES", "ModelShape", "build_model", "count_macs", "count_parameters"]


def build_model(name: str, in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """Build a model by name.

    Raises
    ------
    ValueError
        If ``name`` is unknown; the message lists the valid names.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(
            f"need in_channels >= 1 and num_classes >= 2, got {in_channels} and {num_classes}"
        )
    return _MODELS[name](in_channels, num_classes, width)


@dataclass(frozen=True)
class ModelShape:
    """The model a federation trains: architecture, input channels, classes, window length."""

    name: str
    in_channels: int
    num_classes: int
    window_length: int  # samples per window, T

    def build(self, width: float = 1.0) -> nn.Module:
        """The model at ``width``."""
        return build_model(self.name, self.in_channels, self.num_classes, width)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, in_channels: int, window_length: int) -> int:
    """Multiply-accumulates for one window of shape ``(in_channels, window_length)``.

    Counts Conv1d, Linear and LSTM (``4 * (in * h + h * h)`` per step and direction) with
    forward hooks on a dummy window.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        nonlocal total
        total += layer_macs(module, inputs, output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv1d | nn.Linear | nn.LSTM)
    ]
    try:
        dummy_forward(model, in_channels, window_length)
    finally:
        for handle in handles:
            handle.remove()
    return total
