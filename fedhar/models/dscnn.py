"""DS-CNN: a depthwise-separable 1D convolutional network with global average pooling."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fedhar.models.scaling import scale_width
from fedhar.models.stages import run_front_end

STEM_CHANNELS = 32
BLOCK_CHANNELS = (64, 64, 64)  # output channels of the three separable blocks
BLOCK_POOLS = (True, True, False)  # 4x temporal pooling in total keeps activations small
KERNEL_SIZE = 5


class SeparableBlock(nn.Sequential):
    """Depthwise Conv1d (groups = channels) then pointwise Conv1d, each with BatchNorm + ReLU,
    then an optional 2x max-pool: ``(B, C_in, T)`` -> ``(B, C_out, T')``.

    The depthwise conv keeps its input channel count, so width slicing stays consistent.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        pad = KERNEL_SIZE // 2
        super().__init__(
            OrderedDict(
                depthwise=nn.Conv1d(
                    in_channels,
                    in_channels,
                    KERNEL_SIZE,
                    padding=pad,
                    groups=in_channels,
                    bias=False,
                ),
                bn_dw=nn.BatchNorm1d(in_channels),
                relu_dw=nn.ReLU(),
                pointwise=nn.Conv1d(in_channels, out_channels, 1, bias=False),
                bn_pw=nn.BatchNorm1d(out_channels),
                relu_pw=nn.ReLU(),
                pool=nn.MaxPool1d(2) if pool else nn.Identity(),
            )
        )


class DSCNN(nn.Module):
    """Depthwise-separable CNN for HAR (about 13.6K parameters at 9 channels, 6 classes).

    Adapts the DS-CNN of Zhang et al., "Hello Edge: Keyword Spotting on Microcontrollers"
    (2017), itself built on MobileNet's depthwise-separable convolutions (Howard et al., 2017),
    to 1D inertial windows: a standard conv stem, three separable blocks, global average pooling
    over time and a linear head.

    Parameters
    ----------
    in_channels : int
        Sensor channels C (never scaled).
    num_classes : int
        Number of activity classes K (never scaled).
    width : float
        Width multiplier; hidden sizes are ``ceil(base * width)``.
    """

    FRONT_END = ("stem", "bn_stem", "relu_stem", "blocks")

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        stem = scale_width(STEM_CHANNELS, width)
        self.stem = nn.Conv1d(in_channels, stem, KERNEL_SIZE, padding=KERNEL_SIZE // 2, bias=False)
        self.bn_stem = nn.BatchNorm1d(stem)
        self.relu_stem = nn.ReLU()
        blocks = []
        channels = stem
        for base, pool in zip(BLOCK_CHANNELS, BLOCK_POOLS, strict=True):
            out = scale_width(base, width)
            blocks.append(SeparableBlock(channels, out, pool))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def frontend(self, x: torch.Tensor) -> torch.Tensor:
        """Feature frames ``(B, C, T)`` -> ``(B, C_last, T/4)``: the stem and the blocks."""
        return run_front_end(self, x)

    def temporal(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)``: global average pooling over time, then the head."""
        return self.head(features.mean(dim=-1))  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of windows ``(B, C, T)`` -> ``(B, K)``; T must be at least 4."""
        return self.temporal(self.frontend(x))
