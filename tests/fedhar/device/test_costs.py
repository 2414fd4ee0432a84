"""Simulated client time, energy, availability and round summaries."""

from __future__ import annotations

import dataclasses

import pytest

from fedhar.device.costs import (
    ClientCost,
    inference_seconds,
    is_available,
    simulate_client_cost,
    straggles,
    summarize_round,
)
from fedhar.device.profiles import DeviceProfile, SensorSpec
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


def test_cost_formulas_on_hand_computed_numbers():
    cost = simulate_client_cost(
        BOARD,
        macs_per_window=200_000,
        num_windows=100,
        epochs=2,
        upload_bytes=25_000,
        download_bytes=50_000,
    )
    # 3 * 200k * 100 * 2 = 120e6 MACs at 64e6 * 0.5 = 32e6 MAC/s -> 3.75 s
    assert cost.compute_s == pytest.approx(3.75)
    assert cost.upload_s == pytest.approx(25_000 * 8 / 250_000)  # 0.8 s
    assert cost.download_s == pytest.approx(1.6)
    assert cost.total_s == pytest.approx(3.75 + 0.8 + 1.6)
    assert cost.energy_j == pytest.approx(0.01 * 3.75 + 0.02 * 2.4)


def test_negative_counts_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        simulate_client_cost(BOARD, -1, 1, 1, 0, 0)


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
    base = inference_seconds(BOARD, macs_only)
    assert base == pytest.approx(1_000_000 / 0.5 / 64e6)
    extra = inference_seconds(BOARD, with_lstm) - base
    assert extra == pytest.approx((10_000 * 20 + 5_000 * 4) / 64e6)
    faster = dataclasses.replace(BOARD, clock_hz=128e6)
    assert inference_seconds(faster, with_lstm) == pytest.approx(
        inference_seconds(BOARD, with_lstm) / 2
    )
