"""Streaming inference computes each feature frame once and still equals batch inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedhar.deploy.device_model import deploy_float, deploy_int8
from fedhar.deploy.streaming import (
    StreamingUnsupported,
    batch_logits,
    front_end_geometry,
    stream_logits,
)
from fedhar.models import MODEL_NAMES
from fedhar.models.ops import OpCounts
from tests.fedhar.deploy.conftest import CHANNELS, WINDOW, warmed


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("hop", [16, 20, 64])  # 20 does not line up with 4-sample frames
def test_int8_streaming_outputs_equal_batch_outputs_exactly(name, hop, stream) -> None:
    model = warmed(name)
    device = deploy_int8(model, np.random.default_rng(1).normal(size=(64, CHANNELS, WINDOW)))
    streamed = stream_logits(device, stream, WINDOW, hop)
    batched = batch_logits(device, stream, WINDOW, hop)
    assert streamed.shape == ((stream.shape[1] - WINDOW) // hop + 1, 5)
    np.testing.assert_array_equal(streamed, batched)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float_streaming_outputs_equal_batch_outputs(name, stream) -> None:
    model = warmed(name)
    streamed = stream_logits(deploy_float(model), stream, WINDOW, 16)
    view = np.lib.stride_tricks.sliding_window_view(stream, WINDOW, axis=1)[:, ::16]
    with torch.no_grad():  # the undeployed model itself, window by window
        reference = model(torch.from_numpy(np.ascontiguousarray(view.transpose(1, 0, 2))))
    np.testing.assert_allclose(streamed, reference.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_frames_inside_the_edge_are_the_streams_and_the_edge_is_needed(name, stream) -> None:
    model = warmed(name)
    geometry = front_end_geometry(deploy_float(model).layers())
    s, e, n = geometry.stride, geometry.edge, WINDOW // geometry.stride
    start = 8 * s
    with torch.no_grad():
        frames = model.frontend(torch.from_numpy(stream[None]))[0]
        window = model.frontend(torch.from_numpy(stream[None, :, start : start + WINDOW]))[0]
    here = frames[:, start // s : start // s + n]
    torch.testing.assert_close(window[:, e : n - e], here[:, e : n - e])
    assert not torch.allclose(window[:, e - 1], here[:, e - 1])  # one frame less is wrong
    assert not torch.allclose(window[:, n - e], here[:, n - e])


def test_streaming_computes_fewer_operations_than_batch(stream) -> None:
    device = deploy_int8(warmed("microbi_convlstm"), np.ones((8, CHANNELS, WINDOW), np.float32))
    streaming, batch = OpCounts(), OpCounts()
    stream_logits(device, stream, WINDOW, 16, streaming)
    batch_logits(device, stream, WINDOW, 16, batch)
    # the front end (its ReLUs and pools are the compares) does a quarter less: each window adds
    # 16 new samples and recomputes 2 x 16 at its padded ends, instead of all 64
    assert streaming.compares < 0.8 * batch.compares
    assert streaming.macs < batch.macs
    assert streaming.nonlinear == batch.nonlinear  # the LSTM still reads every window


def test_a_strided_convolution_cannot_stream() -> None:
    layers = [nn.Conv1d(6, 8, 5, stride=2, padding=2), nn.ReLU()]
    with pytest.raises(StreamingUnsupported, match="stride 1"):
        front_end_geometry(layers)
    with pytest.raises(StreamingUnsupported, match="LSTM"):
        front_end_geometry([nn.LSTM(6, 8)])
