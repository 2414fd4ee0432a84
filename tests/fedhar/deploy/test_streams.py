"""Streams rebuilt from windows are the recordings the windows were cut from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from experiments.compose import CONFIG_DIR
from fedhar.data.dataset import ACC_GYRO_CHANNELS, Recording
from fedhar.data.windows import window_recordings
from fedhar.deploy.streams import cut_windows, infer_stride, record_stream, streams_of
from fedhar.device.profiles import load_catalogue
from fedhar.device.sensors import SensorVariability

RATE = 50.0


def recording(user: str = "u1", start_s: float = 0.0, samples: int = 600) -> Recording:
    rng = np.random.default_rng(len(user) + samples)
    labels = np.repeat([0, 2, 1], samples // 3)
    return Recording(
        user=user,
        device="sp",
        time_s=start_s + np.arange(samples) / RATE,
        signals=rng.standard_normal((samples, 6)).astype(np.float32),
        labels=labels.astype(np.int64),
        channel_names=ACC_GYRO_CHANNELS,
    )


def test_stitched_stream_is_the_recording_and_rewindowing_gives_its_windows() -> None:
    rec = recording()
    windows = window_recordings([rec], 100, 25, ("a", "b", "c"), RATE)
    assert infer_stride(windows) == 25
    (stream,) = streams_of(windows, 25)
    covered = (len(windows) - 1) * 25 + 100
    np.testing.assert_allclose(stream.x, rec.signals[:covered].T, atol=1e-6)
    x, y = cut_windows(stream, 100, 25)
    np.testing.assert_array_equal(x, windows.x)
    np.testing.assert_array_equal(y, windows.y)
    # per-sample labels are the recording's except within half a stride of a change
    wrong = np.flatnonzero(stream.labels != rec.labels[:covered])
    changes = np.flatnonzero(np.diff(rec.labels[:covered])) + 1
    assert all(np.abs(changes - i).min() <= 13 for i in wrong)


def test_a_gap_or_another_device_starts_a_new_stream() -> None:
    first, later = recording(), recording(start_s=100.0)
    other = replace(recording(), device="sw")
    windows = window_recordings([first, later, other], 100, 50, ("a", "b", "c"), RATE)
    streams = streams_of(windows, 50)
    assert sorted((s.device, s.x.shape[1]) for s in streams) == [("sp", 600)] * 2 + [("sw", 600)]
    with pytest.raises(ValueError, match="stride"):
        streams_of(windows, 150)


def test_recording_a_stream_is_the_identity_without_effects_and_seeded_with_them() -> None:
    windows = window_recordings([recording()], 100, 50, ("a", "b", "c"), RATE)
    (stream,) = streams_of(windows, 50)
    device = load_catalogue(CONFIG_DIR / "fleet" / "devices" / "catalogue.yaml")["nrf52840"]
    clean = record_stream(stream, device, SensorVariability.none(), 1, 2, chunk=100)
    np.testing.assert_allclose(clean.x, stream.x, atol=1e-6)
    assert clean.device == "nrf52840" and clean.x.shape == stream.x.shape
    noisy = record_stream(
        stream, device, SensorVariability(), 1, 2, chunk=128
    )  # 600 = 4 x 128 + 88
    again = record_stream(stream, device, SensorVariability(), 1, 2, chunk=128)
    assert noisy.x.shape == stream.x.shape
    np.testing.assert_array_equal(noisy.x, again.x)
    assert not np.allclose(noisy.x, stream.x, atol=1e-2)
