"""The two data types every loader produces: raw recordings and windowed datasets."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

ACC_GYRO_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")


@dataclass(frozen=True)
class Recording:
    """One continuous recording of one user on one device.

    Units: accelerometer in g (gravity included), gyroscope in rad/s, time in seconds.
    """

    user: str
    device: str
    time_s: np.ndarray  # (T,) float64, non-decreasing
    signals: np.ndarray  # (T, C) float32
    labels: np.ndarray  # (T,) int64, index into the dataset's class names
    channel_names: tuple[str, ...] = ACC_GYRO_CHANNELS


@dataclass(frozen=True)
class WindowDataset:
    """Fixed-length windows with per-window metadata; every array has N rows."""

    x: np.ndarray  # (N, C, T) float32
    y: np.ndarray  # (N,) int64
    user: np.ndarray  # (N,) str
    device: np.ndarray  # (N,) str
    start_time_s: np.ndarray  # (N,) float64, start of each window
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    sampling_rate_hz: float

    def __post_init__(self) -> None:
        n = len(self.x)
        for name in ("y", "user", "device", "start_time_s"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"WindowDataset.{name} has {len(getattr(self, name))} rows, x has {n}"
                )

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def users(self) -> list[str]:
        """Distinct user ids, sorted."""
        return sorted(set(self.user.tolist()))

    def select(self, mask: np.ndarray) -> WindowDataset:
        """Rows where `mask` (bool or index array) selects."""
        return replace(
            self,
            x=self.x[mask],
            y=self.y[mask],
            user=self.user[mask],
            device=self.device[mask],
            start_time_s=self.start_time_s[mask],
        )

    def for_user(self, user: str) -> WindowDataset:
        return self.select(self.user == user)


def concat_windows(parts: list[WindowDataset]) -> WindowDataset:
    """The windows of ``parts``, one after another; every part has the same classes,
    channels, window length and rate."""
    if not parts:
        raise ValueError("concat_windows needs at least one dataset")
    first = parts[0]
    return replace(
        first,
        x=np.concatenate([p.x for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        user=np.concatenate([p.user for p in parts]),
        device=np.concatenate([p.device for p in parts]),
        start_time_s=np.concatenate([p.start_time_s for p in parts]),
    )
