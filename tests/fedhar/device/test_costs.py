"""Simulated client time, energy, availability and round summaries."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedhar.device.costs import (
    ClientCost,
    compute_seconds,
    is_available,
    simulate_client_cost,
    straggles,
    summarize_round,
    training_ops,
)
from fedhar.device.planner import TrainingPlan, trainable_names
from fedhar.device.profiles import DeviceProfile, SensorSpec
from fedhar.models import build_model
from fedhar.models.ops import OpCounts

SENSOR = SensorSpec(imu="BMI270", accel_range_g=4.0, gyro_range_dps=2000.0, adc_bits=16, rate_hz=50)
BOARD = DeviceProfile(
    name="board",
    kind="mcu",
    sram_bytes=256 * 1024,
    flash_bytes=1024 * 1024,
    clock_hz=64e6,
    macs_per_cycle=0.5,
    active_power_w=0.01,
    radio="ble",
    radio_bandwidth_bps=250_000,
    radio_power_w=0.02,
    runtime_reserve_bytes=64 * 1024,
    availability=0.3,
    weight_bits=8,
    activation_bits=8,
    sensor=SENSOR,
)


def _measured_macs(model: nn.Module, trainable: list[str], length: int = 64) -> int:
    """MACs of one real training step, counted by torch's FLOP counter (2 FLOPs per MAC)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 6, length)).sum().backward()
    return counter.get_total_flops() // 2


def _conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(6, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5),
    )  # fmt: skip


@pytest.mark.parametrize(
    "trainable",
    [
        ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "7.weight", "7.bias"],  # full
        ["7.weight", "7.bias"],  # the head alone: no gradient flows into the body
        ["4.weight", "7.weight", "7.bias"],  # the last two layers
        ["0.bias", "1.bias", "7.weight", "7.bias"],  # biases: gradient flows, no conv dW
    ],
)
def test_training_macs_per_plan_equal_torchs_flop_count(trainable) -> None:
    model = _conv_net()
    assert training_ops(model, 6, 64, trainable).macs == _measured_macs(model, trainable)


@pytest.mark.parametrize("plan", [("last_k", 1), ("last_k", 2), ("bias_only", 0)])
def test_training_macs_of_dscnn_plans_equal_torchs_flop_count(plan) -> None:
    # (the FLOP counter counts a depthwise conv's weight gradient as a dense conv's, so the
    # full plan, which trains depthwise weights, is checked on the plain conv net above)
    model = build_model("dscnn", 6, 7).train()
    trainable = trainable_names(model, TrainingPlan(plan[0], plan[1], 1, 1.0, 0))
    assert training_ops(model, 6, 64, trainable).macs == _measured_macs(model, trainable)


class UnrolledLSTM(nn.Module):
    """An LSTM stack written as matrix products, which the FLOP counter sees."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) -> (B, T, H)
        for layer in range(self.lstm.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
            h = c = x.new_zeros(x.shape[0], self.lstm.hidden_size)
            outputs = []
            for t in range(x.shape[1]):
                i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
        return x


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("input_needs_grad", [False, True])
def test_lstm_backward_through_time_matches_an_unrolled_reference(input_needs_grad, layers) -> None:
    lstm = nn.LSTM(6, 8, num_layers=layers, batch_first=True, bias=False)
    model = _TimeMajor(nn.Sequential(nn.Linear(6, 6), lstm) if input_needs_grad else lstm)
    trainable = [n for n, _ in model.named_parameters()]
    reference = UnrolledLSTM(lstm)
    x = torch.randn(1, 20, 6, requires_grad=input_needs_grad)
    with FlopCounterMode(display=False) as counter:
        reference(x).sum().backward()
    measured = counter.get_total_flops() // 2
    counted = training_ops(model, 6, 20, trainable).macs
    if input_needs_grad:  # the reference's input stands for a trained Linear in front
        counted -= 2 * 6 * 6 * 20  # that Linear's forward and weight gradient
    # each layer's unrolled step at t = 0 needs no gradient for its zero initial state
    assert measured <= counted <= measured + layers * 4 * 8 * 8


class _TimeMajor(nn.Module):
    """Feeds ``(B, C, T)`` windows to a batch-first recurrent stack as ``(B, T, C)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.transpose(1, 2))


def test_round_cost_scales_with_windows_epochs_and_bandwidth():
    ops = training_ops(build_model("microbi_convlstm", 6, 7), 6, 64, None)
    base = simulate_client_cost(BOARD, ops, 100, 1, 10_000, 20_000)
    assert simulate_client_cost(BOARD, ops, 200, 1, 0, 0).compute_s == pytest.approx(
        2 * base.compute_s
    )
    assert simulate_client_cost(BOARD, ops, 100, 3, 0, 0).compute_s == pytest.approx(
        3 * base.compute_s
    )
    fast = dataclasses.replace(BOARD, radio_bandwidth_bps=2 * BOARD.radio_bandwidth_bps)
    assert simulate_client_cost(fast, ops, 100, 1, 10_000, 20_000).upload_s == pytest.approx(
        base.upload_s / 2
    )
    assert base.total_s == pytest.approx(base.compute_s + base.upload_s + base.download_s)
    # a head-only plan costs a fraction of training everything
    head = training_ops(build_model("microbi_convlstm", 6, 7), 6, 64, ["head.weight", "head.bias"])
    assert compute_seconds(BOARD, head) < 0.5 * compute_seconds(BOARD, ops)


def test_negative_counts_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        simulate_client_cost(BOARD, OpCounts(), -1, 1, 0, 0)


def test_availability_is_deterministic_and_follows_the_probability():
    draws = [is_available(BOARD, r, node_seed=11) for r in range(4000)]
    assert draws == [is_available(BOARD, r, node_seed=11) for r in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(0.3, abs=0.03)
    always = dataclasses.replace(BOARD, availability=1.0)
    never = dataclasses.replace(BOARD, availability=0.0)
    assert all(is_available(always, r, 5) for r in range(50))
    assert not any(is_available(never, r, 5) for r in range(50))


def test_availability_trace_is_cycled():
    trace = [1, 0, 0]
    assert [is_available(BOARD, r, 0, trace) for r in range(1, 7)] == [True, False, False] * 2
    with pytest.raises(ValueError, match="0/1"):
        is_available(BOARD, 0, 0, [1, 2])


def test_stragglers_and_round_summary():
    fast = ClientCost(compute_s=2.0, upload_s=0.5, download_s=0.5, energy_j=1.0)  # 3 s
    slow = ClientCost(compute_s=8.0, upload_s=1.0, download_s=1.0, energy_j=4.0)  # 10 s
    assert not straggles(slow, None)
    assert straggles(slow, 5.0) and not straggles(fast, 5.0)

    free = summarize_round([fast, slow], deadline_s=None, dropouts=1, declines=2)
    assert free.wall_clock_s == pytest.approx(10.0)
    assert free.energy_j == pytest.approx(5.0)
    assert (free.participants, free.completed, free.stragglers) == (2, 2, 0)
    assert (free.dropouts, free.declines) == (1, 2)

    cut = summarize_round([fast, slow], deadline_s=5.0)
    assert cut.wall_clock_s == pytest.approx(5.0)  # the server waits out the deadline
    assert cut.energy_j == pytest.approx(1.0 + 4.0 * 5.0 / 10.0)
    assert (cut.completed, cut.stragglers) == (1, 1)

    assert summarize_round([], deadline_s=5.0).wall_clock_s == 0.0


def test_inference_time_adds_non_mac_cycles_and_scales_with_the_clock():
    macs_only = OpCounts(macs=1_000_000)
    with_lstm = OpCounts(macs=1_000_000, nonlinear=10_000, requantize=5_000)
    base = compute_seconds(BOARD, macs_only)
    assert base == pytest.approx(1_000_000 / 0.5 / 64e6)
    extra = compute_seconds(BOARD, with_lstm) - base
    assert extra == pytest.approx((10_000 * 20 + 5_000 * 4) / 64e6)
    faster = dataclasses.replace(BOARD, clock_hz=128e6)
    assert compute_seconds(faster, with_lstm) == pytest.approx(
        compute_seconds(BOARD, with_lstm) / 2
    )
