"""Streaming inference: a stream runs window by window, each feature frame computed once.

The front end's convolutions are "same"-padded and its pools are strided, so a window's feature
frames are the stream's feature frames at the same place, except ``edge`` frames at each end
that see the window's zero padding. Those are recomputed from a short span at each end of the
window; the rest is computed once for the stream. Outputs equal running each window on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedhar.deploy.device_model import DeployedModel
from fedhar.deploy.streams import window_starts
from fedhar.models.ops import OpCounts

POINTWISE = (nn.BatchNorm1d, nn.ReLU, nn.Identity, nn.Dropout)


class StreamingUnsupported(ValueError):
    """The front end has a layer whose outputs are not local in time."""


@dataclass(frozen=True)
class Geometry:
    """Where a window's feature frames sit in the stream's."""

    stride: int  # input samples per feature frame
    edge: int  # feature frames at each end of a window that see its zero padding

    def reuses(self, window_length: int, hop: int) -> bool:
        """Whether windows of this length and hop line up with the stream's feature frames."""
        return window_length % self.stride == 0 and hop % self.stride == 0


def front_end_geometry(layers: list[nn.Module]) -> Geometry:
    """Stride and padded edge of a front end of same-padded convs, pools and pointwise layers."""
    stride, edge = 1, 0
    for layer in layers:
        if isinstance(layer, nn.Conv1d):
            (kernel,), (step,), (dilation,) = layer.kernel_size, layer.stride, layer.dilation
            pad = layer.padding
            if step != 1 or isinstance(pad, str) or 2 * pad[0] != dilation * (kernel - 1):
                raise StreamingUnsupported(f"{layer}: streaming needs stride 1, 'same' padding")
            edge += pad[0]
        elif isinstance(layer, nn.MaxPool1d):
            size, pool = layer.kernel_size, layer.stride
            if size != pool or layer.padding != 0 or not isinstance(pool, int):
                raise StreamingUnsupported(f"{layer}: streaming needs kernel == stride, no padding")
            stride, edge = stride * pool, math.ceil(edge / pool)
        elif not isinstance(layer, POINTWISE):
            raise StreamingUnsupported(f"{type(layer).__name__} is not a streaming layer")
    return Geometry(stride, edge)


def _cut(stream: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    view = np.lib.stride_tricks.sliding_window_view(stream, length, axis=1)  # (C, L', length)
    return torch.from_numpy(np.ascontiguousarray(view[:, starts].transpose(1, 0, 2)))


def batch_logits(
    model: DeployedModel, stream: np.ndarray, window_length: int, hop: int,
    counts: OpCounts | None = None,
) -> np.ndarray:  # fmt: skip
    """Logits ``(W, K)`` of the stream's windows ``(C, L)``, every window run on its own."""
    starts = window_starts(stream.shape[1], window_length, hop)
    return model.logits(_cut(stream, starts, window_length).numpy(), counts)


def stream_logits(
    model: DeployedModel, stream: np.ndarray, window_length: int, hop: int,
    counts: OpCounts | None = None,
) -> np.ndarray:  # fmt: skip
    """Logits ``(W, K)`` of the stream's windows, each feature frame computed once.

    Falls back to `batch_logits` when the windows do not line up with the feature frames
    (`Geometry.reuses`).
    """
    geometry = front_end_geometry(model.layers())
    starts = window_starts(stream.shape[1], window_length, hop)
    if len(starts) == 0 or not geometry.reuses(window_length, hop):
        return batch_logits(model, stream, window_length, hop, counts)
    s, e, n = geometry.stride, geometry.edge, window_length // geometry.stride
    frames = model.frontend(torch.from_numpy(np.ascontiguousarray(stream[None])), counts)[0]
    features = torch.stack([frames[:, start // s : start // s + n] for start in starts])
    if e:  # (W, F, n) with its padded ends recomputed from a span of 2e frames at each end
        span = min(window_length, 2 * e * s)
        features[:, :, :e] = model.frontend(_cut(stream, starts, span), counts)[:, :, :e]
        right = _cut(stream, starts + window_length - span, span)
        features[:, :, n - e :] = model.frontend(right, counts)[:, :, -e:]
    return model.temporal(features, counts).numpy()
