"""Continuous recordings rebuilt from a user's windows, as a device records them, re-windowed.

A dataset hands out overlapping windows; deployment runs on the recording they were cut from.
Consecutive windows of one user and device whose starts are one stride apart are stitched back
into a stream, and each sample takes the label of the window whose centre is nearest (exact
inside an activity, within half a stride at its boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedhar.data.dataset import WindowDataset
from fedhar.device.profiles import DeviceProfile
from fedhar.device.sensors import SensorVariability, apply_sensor_model, draw_sensor_instance


@dataclass(frozen=True)
class Stream:
    """One continuous recording of one user on one device."""

    user: str
    device: str  # the dataset's device label, or the profile that recorded it
    x: np.ndarray  # (C, L) float32
    labels: np.ndarray  # (L,) int64
    rate_hz: float

    @property
    def seconds(self) -> float:
        """Length of the recording."""
        return self.x.shape[1] / self.rate_hz


# Samples the sensor model records at once (~5 s at 50 Hz). The sensor model is built for
# windows: over a longer piece a slow clock (1% sd) samples further past the piece's end,
# where it can only hold the last sample.
RECORDING_CHUNK = 256


def infer_stride(windows: WindowDataset) -> int:
    """The most common gap, in samples, between consecutive window starts of one user's device."""
    gaps = []
    for user in windows.users:
        for device in sorted(set(windows.device[windows.user == user])):
            mine = (windows.user == user) & (windows.device == device)
            starts = np.sort(windows.start_time_s[mine])
            gaps.append(np.round(np.diff(starts) * windows.sampling_rate_hz).astype(np.int64))
    positive = np.concatenate(gaps) if gaps else np.zeros(0, np.int64)
    positive = positive[positive > 0]
    if len(positive) == 0:
        raise ValueError("cannot infer the window stride: no user has two windows")
    values, counts = np.unique(positive, return_counts=True)
    return int(values[counts.argmax()])


def _stitch(group: WindowDataset, stride: int, user: str, device: str) -> Stream:
    t = group.x.shape[-1]
    tail = group.x[1:, :, t - stride :]  # (W-1, C, stride): what each later window adds
    x = np.concatenate([group.x[0], *tail], axis=1)  # (C, L)
    centres = np.arange(len(group)) * stride + t / 2
    nearest = np.abs(np.arange(x.shape[1])[:, None] + 0.5 - centres[None, :]).argmin(axis=1)
    return Stream(user, device, x.astype(np.float32), group.y[nearest], group.sampling_rate_hz)


def streams_of(windows: WindowDataset, stride: int) -> list[Stream]:
    """Every contiguous run of windows, per user and device, as one stream.

    Windows are contiguous when their starts are exactly `stride` samples apart (and `stride`
    is at most the window length); anything else starts a new stream.
    """
    t = windows.x.shape[-1]
    if not 0 < stride <= t:
        raise ValueError(f"stride must be in 1..{t} (the window length) to stitch, got {stride}")
    streams = []
    for user in windows.users:
        mine = windows.for_user(user)
        for device in sorted(set(mine.device)):
            group = mine.select(mine.device == device)
            group = group.select(np.argsort(group.start_time_s, kind="stable"))
            gaps = np.round(np.diff(group.start_time_s) * group.sampling_rate_hz)
            breaks = np.flatnonzero(gaps != stride) + 1
            for rows in np.split(np.arange(len(group)), breaks):
                streams.append(_stitch(group.select(rows), stride, user, device))
    return streams


def window_starts(length: int, window_length: int, hop: int) -> np.ndarray:
    """Start samples of the windows a device cuts from a stream of `length` samples."""
    if window_length < 1 or hop < 1:
        raise ValueError(f"window_length and hop must be >= 1, got {window_length}, {hop}")
    return np.arange(0, length - window_length + 1, hop)


def cut_windows(stream: Stream, window_length: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``(W, C, T)`` every `hop` samples and their majority labels ``(W,)``."""
    starts = window_starts(stream.x.shape[1], window_length, hop)
    view = np.lib.stride_tricks.sliding_window_view(stream.x, window_length, axis=1)
    x = np.ascontiguousarray(view[:, starts].transpose(1, 0, 2))  # (W, C, T)
    num_classes = int(stream.labels.max()) + 1 if len(stream.labels) else 1
    one_hot = np.eye(num_classes, dtype=np.int64)[stream.labels]  # (L, K)
    cumulative = np.concatenate([np.zeros((1, num_classes), np.int64), one_hot.cumsum(0)])
    counts = cumulative[starts + window_length] - cumulative[starts]  # (W, K)
    return x, counts.argmax(axis=1)


def record_stream(
    stream: Stream,
    profile: DeviceProfile,
    variability: SensorVariability,
    device_seed: int,
    call_seed: int,
    chunk: int = RECORDING_CHUNK,
) -> Stream:
    """The stream as `profile`'s sensor instance records it, in consecutive `chunk`-sample
    pieces: the device is the same one, but the sensor model restarts its clock, its jitter and
    its resampling at each piece, so a window across a seam sees a small discontinuity."""
    instance = draw_sensor_instance(profile, device_seed)
    channels, length = stream.x.shape
    whole = length // chunk * chunk
    pieces = stream.x[:, :whole].reshape(channels, -1, chunk).transpose(1, 0, 2)
    parts = []
    if whole:
        parts.append(apply_sensor_model(pieces, stream.rate_hz, instance, variability, call_seed))
    if whole < length:
        rest = stream.x[None, :, whole:]  # (1, C, L - whole)
        parts.append(apply_sensor_model(rest, stream.rate_hz, instance, variability, call_seed + 1))
    x = np.concatenate([p.transpose(1, 0, 2).reshape(channels, -1) for p in parts], axis=1)
    if not np.isfinite(x).all():
        raise ValueError(f"the sensor model of {profile.name} produced non-finite samples over "
                         f"pieces of {chunk} samples; record in shorter pieces")  # fmt: skip
    return replace(stream, device=profile.name, x=x.astype(np.float32))
