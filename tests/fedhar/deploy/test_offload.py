"""Confidence-based offload and the calibration it relies on."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.deploy.offload import (
    expected_calibration_error,
    offload_curve,
    offloaded,
    softmax,
    window_bytes,
)
from fedhar.metrics import accuracy, confusion_matrix


def scores(seed: int = 0, n: int = 400, k: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    device = softmax(rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels])
    cloud = softmax(rng.normal(size=(n, k)) + 4.0 * np.eye(k)[labels])
    return device, cloud, labels


def test_threshold_zero_sends_nothing_and_one_sends_everything() -> None:
    device, cloud, labels = scores()
    confident = softmax(np.array([[50.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))  # max 1.0 and 1/3
    assert not offloaded(confident.max(axis=1), 0.0).any()
    assert offloaded(confident.max(axis=1), 1.0).all()
    curve = offload_curve(device, cloud, labels, [0.0, 0.5, 1.0], 1216, 7200.0, 2.5e5, 0.02)
    assert curve[0].offload_rate == 0.0 and curve[0].uplink_bytes_per_hour == 0.0
    assert curve[-1].offload_rate == 1.0
    assert curve[-1].uplink_bytes_per_hour == pytest.approx(7200 * 1216)
    assert curve[-1].radio_energy_j_per_hour == pytest.approx(5.603328)  # 280.2 s at 20 mW
    k = device.shape[1]
    device_only = accuracy(confusion_matrix(labels, device.argmax(1), k))
    cloud_only = accuracy(confusion_matrix(labels, cloud.argmax(1), k))
    assert curve[0].accuracy == pytest.approx(device_only)
    assert curve[-1].accuracy == pytest.approx(cloud_only)
    with pytest.raises(ValueError, match="threshold"):
        offloaded(device.max(axis=1), 1.5)


def test_offloading_the_least_confident_windows_first_pays_off() -> None:
    device, cloud, labels = scores()
    thresholds = np.linspace(0, 1, 11)
    curve = offload_curve(device, cloud, labels, thresholds, 1216, 7200.0, 2.5e5, 0.02)
    rates = [p.offload_rate for p in curve]
    assert rates == sorted(rates)
    half = next(p for p in curve if p.offload_rate >= 0.5)
    gained = half.accuracy - curve[0].accuracy
    assert gained > 0.6 * (curve[-1].accuracy - curve[0].accuracy)  # most of the gain at half


def test_ece_is_zero_when_calibrated_and_the_gap_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < confidence  # right as often as it claims
    probs = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.where(correct, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02
    always = np.tile([0.9, 0.1], (n, 1))
    half_right = np.arange(n) % 2
    assert expected_calibration_error(always, half_right) == pytest.approx(0.4)


def test_an_offloaded_window_is_its_raw_int16_samples_and_a_header() -> None:
    assert window_bytes(6, 100) == 6 * 100 * 2 + 16
