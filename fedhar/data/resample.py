"""Put a recording with irregular timestamps onto a uniform time grid."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedhar.data.dataset import Recording


def resample_uniform(recording: Recording, rate_hz: float) -> Recording:
    """Resample `recording` onto a uniform grid at `rate_hz`, starting at its first sample.

    Timestamps may be irregular, repeated or out of order. Samples are sorted by time (stable),
    rows sharing a timestamp are averaged (their label is the first one's), signals are
    linearly interpolated and labels take the previous sample's value (zero-order hold).

    Parameters
    ----------
    recording : Recording
        Input recording; time in seconds.
    rate_hz : float
        Target sampling rate.

    Returns
    -------
    Recording
        Same user, device and channels; `time_s` is `t0 + arange(T') / rate_hz`.
    """
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    time = np.asarray(recording.time_s, dtype=np.float64)
    signals = np.asarray(recording.signals, dtype=np.float64)  # (T, C)
    if signals.ndim != 2 or len(signals) != len(time) or len(recording.labels) != len(time):
        raise ValueError(
            f"recording {recording.user}/{recording.device}: time ({len(time)}), signals "
            f"{signals.shape} and labels ({len(recording.labels)}) must share the first axis"
        )
    if not (np.isfinite(time).all() and np.isfinite(signals).all()):
        raise ValueError(f"recording {recording.user}/{recording.device} has NaN or inf values")

    order = np.argsort(time, kind="stable")
    time, signals, labels = time[order], signals[order], np.asarray(recording.labels)[order]
    unique_t, first, inverse = np.unique(time, return_index=True, return_inverse=True)
    if len(unique_t) < 2:
        raise ValueError(
            f"recording {recording.user}/{recording.device} needs at least two distinct "
            f"timestamps to resample, got {len(unique_t)}"
        )
    counts = np.bincount(inverse, minlength=len(unique_t)).astype(np.float64)
    sums = np.zeros((len(unique_t), signals.shape[1]))
    np.add.at(sums, inverse, signals)
    merged = sums / counts[:, None]  # (U, C)
    merged_labels = labels[first]  # (U,)

    n_out = int(np.floor((unique_t[-1] - unique_t[0]) * rate_hz + 1e-9)) + 1
    grid = unique_t[0] + np.arange(n_out) / rate_hz  # (T',)
    out = np.empty((n_out, merged.shape[1]), dtype=np.float32)
    for c in range(merged.shape[1]):
        out[:, c] = np.interp(grid, unique_t, merged[:, c])
    previous = np.searchsorted(unique_t, grid + 1e-9, side="right") - 1
    out_labels = merged_labels[np.clip(previous, 0, len(unique_t) - 1)].astype(np.int64)
    return replace(recording, time_s=grid, signals=out, labels=out_labels)
