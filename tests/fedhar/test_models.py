"""Tiny HAR models: sizes, shapes, width scaling, length-agnostic inputs and MAC counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedhar.models import MODEL_NAMES, build_model, count_macs, count_parameters
from fedhar.models.ops import OpCounts, counting, leaf_layers

PARAM_RANGES = {
    "microbi_convlstm": (10_000, 12_500),
    "dscnn": (5_000, 20_000),
    "deepconvlstm": (250_000, 350_000),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_in_range(name: str) -> None:
    low, high = PARAM_RANGES[name]
    assert low <= count_parameters(build_model(name, 9, 6)) <= high


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("length", [32, 100, 128])
def test_output_shape_for_any_length(name: str, length: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, 6, 5)
    logits = model(torch.randn(3, 6, length))
    assert logits.shape == (3, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_head_is_final_linear_and_order_runs_input_to_output(name: str) -> None:
    model = build_model(name, 9, 6)
    assert isinstance(model.head, nn.Linear)
    assert model.head.out_features == 6
    keys = list(model.state_dict())
    assert keys[-2:] == ["head.weight", "head.bias"]
    first_weight = next(p for n, p in model.named_parameters() if n.endswith("weight"))
    assert first_weight.shape[1] == 9  # the first layer reads the input channels


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_half_width_is_smaller_with_ceil_hidden_sizes(name: str) -> None:
    full, half = build_model(name, 9, 6), build_model(name, 9, 6, width=0.5)
    assert count_parameters(half) < count_parameters(full)
    half_params = dict(half.named_parameters())
    for n, p_full in full.named_parameters():
        assert half_params[n].numel() <= p_full.numel(), n
    assert half.head.in_features < full.head.in_features
    assert half.head.out_features == 6


def test_width_rounds_up() -> None:
    model = build_model("microbi_convlstm", 9, 6, width=0.3)
    assert model.conv1.out_channels == math.ceil(16 * 0.3)
    assert model.lstm.hidden_size == math.ceil(22 * 0.3)
    assert model.conv1.in_channels == 9


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="dscnn") as err:
        build_model("resnet", 9, 6)
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_bad_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="width"):
        build_model("dscnn", 9, 6, width=0.0)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.dw = nn.Conv1d(4, 4, 3, padding=1, groups=4)
        self.lstm = nn.LSTM(4, 5, batch_first=True, bidirectional=True)
        self.head = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.dw(self.conv(x)).transpose(1, 2))  # (B, T, 10)
        return self.head(out[:, -1])


def test_macs_match_hand_computation() -> None:
    T = 7
    conv = T * 4 * 3 * 3  # outputs * (in / groups) * kernel
    dw = T * 4 * 1 * 3
    lstm = 2 * T * 4 * (4 * 5 + 5 * 5)  # directions * steps * gates * (in*h + h*h)
    head = 10 * 2
    assert count_macs(_Tiny(), 3, T) == conv + dw + lstm + head


def test_macs_of_stacked_lstm_use_hidden_as_next_input() -> None:
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x.transpose(1, 2))[0]

    assert count_macs(Wrap(), 3, 5) == 5 * 4 * (3 * 4 + 4 * 4) + 5 * 4 * (4 * 4 + 4 * 4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_macs_grow_with_window_length(name: str) -> None:
    model = build_model(name, 9, 6)
    assert count_macs(model, 9, 128) > count_macs(model, 9, 64) > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_counted_operations_agree_with_count_macs_and_layer_outputs(name: str) -> None:
    model = build_model(name, 9, 6).eval()
    counts = OpCounts()
    relu_outputs = 0

    def relu_size(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal relu_outputs
        relu_outputs += output.numel()

    handles = [
        m.register_forward_hook(relu_size) for m in model.modules() if isinstance(m, nn.ReLU)
    ]
    with counting(leaf_layers(model), counts), torch.no_grad():
        model(torch.zeros(1, 9, 64))
    for handle in handles:
        handle.remove()
    assert counts.macs == count_macs(model, 9, 64)
    pools = counts.compares - relu_outputs  # what the max-pools compared
    assert pools >= 0 and (pools > 0) == any(isinstance(m, nn.MaxPool1d) for m in model.modules())
    assert (counts.nonlinear > 0) == any(isinstance(m, nn.LSTM) for m in model.modules())
    assert counts.requantize == 0  # a float model requantizes nothing
