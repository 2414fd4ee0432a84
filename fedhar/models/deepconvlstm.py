"""DeepConvLSTM: four temporal convolutions followed by two stacked LSTM layers."""

from __future__ import annotations

import torch
from torch import nn

from fedhar.models.scaling import scale_width
from fedhar.models.stages import run_front_end

CONV_FILTERS = 64
CONV_LAYERS = 4
KERNEL_SIZE = 5
LSTM_HIDDEN = 128
LSTM_LAYERS = 2
DROPOUT = 0.5  # the paper applies dropout 0.5 before the classifier


class DeepConvLSTM(nn.Module):
    """DeepConvLSTM, the large reference model (about 297K parameters at 9 channels, 6 classes).

    Ordóñez & Roggen, "Deep Convolutional and LSTM Recurrent Neural Networks for Multimodal
    Wearable Activity Recognition", Sensors 16(1):115, 2016. Four conv layers of 64 filters
    (kernel 5, ReLU), two LSTM layers of 128 units, classifier on the last time step. As in
    common PyTorch re-implementations the convolutions are Conv1d over time (channels mixed in
    the first layer) and padded so that any window length works.

    Parameters
    ----------
    in_channels : int
        Sensor channels C (never scaled).
    num_classes : int
        Number of activity classes K (never scaled).
    width : float
        Width multiplier; hidden sizes are ``ceil(base * width)``.
    """

    FRONT_END = ("convs",)

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        filters = scale_width(CONV_FILTERS, width)
        hidden = scale_width(LSTM_HIDDEN, width)
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(CONV_LAYERS):
            conv = nn.Conv1d(channels, filters, KERNEL_SIZE, padding=KERNEL_SIZE // 2)
            layers += [conv, nn.ReLU()]
            channels = filters
        self.convs = nn.Sequential(*layers)
        self.lstm = nn.LSTM(filters, hidden, num_layers=LSTM_LAYERS, batch_first=True)
        self.dropout = nn.Dropout(DROPOUT)
        self.head = nn.Linear(hidden, num_classes)

    def frontend(self, x: torch.Tensor) -> torch.Tensor:
        """Feature frames ``(B, C, T)`` -> ``(B, F, T)``: the four convolutions."""
        return run_front_end(self, x)

    def temporal(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` from the stacked LSTM's last step."""
        out, _ = self.lstm(features.transpose(1, 2))  # (B, T, H)
        return self.head(self.dropout(out[:, -1]))  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of windows ``(B, C, T)`` -> ``(B, K)``."""
        return self.temporal(self.frontend(x))
