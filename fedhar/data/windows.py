"""Cut uniformly sampled recordings into fixed-length, labelled windows."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedhar.data.dataset import ACC_GYRO_CHANNELS, Recording, WindowDataset
from fedhar.data.resample import resample_uniform

logger = logging.getLogger(__name__)


def window_recordings(
    recordings: Sequence[Recording],
    window_length: int,
    stride: int,
    class_names: Sequence[str],
    rate_hz: float,
    drop_mixed: bool = False,
) -> WindowDataset:
    """Resample every recording to `rate_hz` and cut sliding windows.

    Windows never cross recordings. Each window's label is its majority sample label
    (ties go to the lower class index); with `drop_mixed` windows holding more than one
    label are dropped. A recording shorter than one window is skipped with a warning.

    Parameters
    ----------
    recordings : sequence of Recording
        Recordings sharing one channel layout.
    window_length, stride : int
        Window size and hop, in samples at `rate_hz`.
    class_names : sequence of str
        Names for label indices 0..K-1.
    rate_hz : float
        Sampling rate of the windows.
    drop_mixed : bool
        Drop windows whose samples do not all share one label.
    """
    if window_length < 1 or stride < 1:
        raise ValueError(f"window_length and stride must be >= 1, got {window_length}, {stride}")
    num_classes = len(class_names)
    channels = recordings[0].channel_names if recordings else ACC_GYRO_CHANNELS
    xs, ys, users, devices, starts = [], [], [], [], []
    for rec in recordings:
        if rec.channel_names != channels:
            raise ValueError(
                f"recording {rec.user}/{rec.device} has channels {rec.channel_names}, "
                f"expected {channels}"
            )
        if len(rec.labels) and (rec.labels.min() < 0 or rec.labels.max() >= num_classes):
            raise ValueError(
                f"recording {rec.user}/{rec.device} has labels outside 0..{num_classes - 1} "
                f"for classes {tuple(class_names)}"
            )
        uniform = resample_uniform(rec, rate_hz)
        n_samples = len(uniform.time_s)
        if n_samples < window_length:
            logger.warning(
                "recording %s/%s skipped: %d samples at %g Hz, fewer than one window of %d",
                rec.user,
                rec.device,
                n_samples,
                rate_hz,
                window_length,
            )
            continue
        begin = np.arange(0, n_samples - window_length + 1, stride)  # (W,)
        view = np.lib.stride_tricks.sliding_window_view(uniform.signals, window_length, axis=0)
        x = view[begin]  # (W, C, L)
        one_hot = np.eye(num_classes, dtype=np.int64)[uniform.labels]  # (T, K)
        cumulative = np.concatenate([np.zeros((1, num_classes), np.int64), one_hot.cumsum(0)])
        counts = cumulative[begin + window_length] - cumulative[begin]  # (W, K)
        keep = counts.max(1) == window_length if drop_mixed else np.ones(len(begin), bool)
        xs.append(x[keep])
        ys.append(counts.argmax(1)[keep])
        starts.append(uniform.time_s[begin][keep])
        users.append(np.full(int(keep.sum()), rec.user, dtype=object))
        devices.append(np.full(int(keep.sum()), rec.device, dtype=object))
    if not xs:
        xs = [np.zeros((0, len(channels), window_length), np.float32)]
        ys, starts = [np.zeros(0, np.int64)], [np.zeros(0)]
        users, devices = [np.zeros(0, object)], [np.zeros(0, object)]
    return WindowDataset(
        x=np.ascontiguousarray(np.concatenate(xs), dtype=np.float32),
        y=np.concatenate(ys).astype(np.int64),
        user=np.concatenate(users).astype(str),
        device=np.concatenate(devices).astype(str),
        start_time_s=np.concatenate(starts).astype(np.float64),
        class_names=tuple(class_names),
        channel_names=tuple(channels),
        sampling_rate_hz=float(rate_hz),
    )
