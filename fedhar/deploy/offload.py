"""Confidence-based offload: windows the device model is unsure of go to the cloud model.

A window is offloaded when the device model's confidence (its largest softmax probability) is
at or below the threshold: threshold 0 offloads nothing (confidence is at least 1/K), threshold
1 offloads everything. The device pays the uplink of the raw window at its radio's cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedhar.metrics import accuracy, confusion_matrix, macro_f1

SAMPLE_BYTES = 2  # int16 sensor samples, as the IMU reports them
HEADER_BYTES = 16  # device id, sequence number, timestamp of an offloaded window


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def offloaded(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """True for windows sent to the cloud: confidence at or below `threshold`."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"an offload threshold is a probability in [0, 1], got {threshold}")
    return confidence <= threshold


def window_bytes(channels: int, window_length: int) -> int:
    """Uplink bytes of one offloaded window."""
    return channels * window_length * SAMPLE_BYTES + HEADER_BYTES


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """ECE over `bins` equal-width confidence bins (Guo et al. 2017): the support-weighted mean
    gap between accuracy and confidence."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap)


@dataclass(frozen=True)
class OffloadPoint:
    """The deployment at one threshold."""

    threshold: float
    offload_rate: float  # share of windows sent to the cloud
    macro_f1: float
    accuracy: float
    uplink_bytes_per_hour: float
    radio_energy_j_per_hour: float


def offload_curve(
    device_probabilities: np.ndarray,  # (N, K)
    cloud_probabilities: np.ndarray,  # (N, K)
    labels: np.ndarray,  # (N,)
    thresholds: Sequence[float],
    bytes_per_window: int,
    windows_per_hour: float,
    radio_bandwidth_bps: float,
    radio_power_w: float,
) -> list[OffloadPoint]:
    """Accuracy, offload rate, uplink bytes and radio energy at each threshold."""
    num_classes = device_probabilities.shape[1]
    confidence = device_probabilities.max(axis=1)
    device, cloud = device_probabilities.argmax(axis=1), cloud_probabilities.argmax(axis=1)
    points = []
    for threshold in thresholds:
        sent = offloaded(confidence, threshold)
        confusion = confusion_matrix(labels, np.where(sent, cloud, device), num_classes)
        per_hour = float(sent.mean()) * windows_per_hour * bytes_per_window
        radio_j = per_hour * 8 / radio_bandwidth_bps * radio_power_w
        points.append(OffloadPoint(float(threshold), float(sent.mean()), macro_f1(confusion),
                                   accuracy(confusion), per_hour, radio_j))  # fmt: skip
    return points
