"""A dataset seen user by user: who the users are, and one user's windows on demand.

A federation needs every user's name and device to decide who takes part, but each client
needs only its own windows. `LoadedUsers` indexes a loaded `WindowDataset` once;
`SyntheticUsers` generates (and caches on disk) one synthetic user's windows the first time
they are asked for, so a federation of 10,000 synthetic users never holds them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from functools import cached_property, lru_cache
from typing import Protocol

import numpy as np

from fedhar.data.cache import cache_root, config_key, load_windows, save_windows
from fedhar.data.dataset import ACC_GYRO_CHANNELS, WindowDataset, concat_windows
from fedhar.data.synthetic import (
    GENERATOR_VERSION,
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    synthetic_user_name,
    synthetic_user_windows,
)

NO_ROWS = np.zeros(0, dtype=np.int64)


class UserSource(Protocol):
    """Users of a dataset, in dataset order, with their windows one user at a time."""

    lazy: bool  # True: holds no windows until asked for a user's (cheap to keep around)

    @property
    def users(self) -> tuple[str, ...]:
        """Every user, in the order their windows appear in the dataset."""
        ...

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, classes, window length) of every window."""
        ...

    def device_of(self, user: str) -> str:
        """The user's device label ('+'-joined when they wore several)."""
        ...

    def window_count(self, user: str) -> int:
        """How many windows the user has (train and test), without reading them."""
        ...

    def windows_of(self, user: str) -> WindowDataset:
        """All of one user's windows."""
        ...

    def windows_of_users(self, users: Collection[str]) -> WindowDataset:
        """All windows of ``users``, in dataset order."""
        ...


class LoadedUsers:
    """A loaded `WindowDataset`, indexed by user once."""

    lazy = False

    def __init__(self, windows: WindowDataset) -> None:
        self.windows = windows

    @cached_property
    def _rows(self) -> dict[str, np.ndarray]:
        order = np.argsort(self.windows.user, kind="stable")
        names, starts = np.unique(self.windows.user[order], return_index=True)
        return {
            str(name): order[start:end]
            for name, start, end in zip(names, starts, [*starts[1:], len(order)], strict=True)
        }

    @property
    def users(self) -> tuple[str, ...]:
        _, first = np.unique(self.windows.user, return_index=True)
        return tuple(str(self.windows.user[i]) for i in sorted(first))

    @property
    def shape(self) -> tuple[int, int, int]:
        _, channels, length = self.windows.x.shape
        return channels, self.windows.num_classes, length

    def device_of(self, user: str) -> str:
        return "+".join(sorted(set(self.windows.device[self._rows[user]].tolist())))

    def window_count(self, user: str) -> int:
        return len(self._rows[user])

    def windows_of(self, user: str) -> WindowDataset:
        return self.windows.select(self._rows[user])

    def windows_of_users(self, users: Collection[str]) -> WindowDataset:
        return self.windows.select(np.isin(self.windows.user, list(users)))


class SyntheticUsers:
    """Synthetic users generated one at a time, each cached on disk after the first time."""

    lazy = True

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config

    @cached_property
    def users(self) -> tuple[str, ...]:
        return tuple(synthetic_user_name(i) for i in range(self.config.num_users))

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(ACC_GYRO_CHANNELS), len(SYNTHETIC_CLASSES), self.config.window_length

    def device_of(self, user: str) -> str:
        return "synthetic"

    def window_count(self, user: str) -> int:
        """Every synthetic user records the same number of samples, so the same windows."""
        samples = round(self.config.seconds_per_user * self.config.rate_hz)
        length, stride = self.config.window_length, self.config.stride
        return 0 if samples < length else (samples - length) // stride + 1

    def windows_of(self, user: str) -> WindowDataset:
        index = int(user.removeprefix("u"))
        if not 0 <= index < self.config.num_users or synthetic_user_name(index) != user:
            raise KeyError(f"no synthetic user {user!r} among {self.config.num_users} users")
        return _synthetic_user(self.config, index)

    def windows_of_users(self, users: Collection[str]) -> WindowDataset:
        chosen = set(users)
        parts = [self.windows_of(u) for u in self.users if u in chosen]
        return concat_windows(parts) if parts else self.windows_of(self.users[0]).select(NO_ROWS)


@lru_cache(maxsize=64)
def _synthetic_user(config: SyntheticConfig, index: int) -> WindowDataset:
    if not config.cache:
        return synthetic_user_windows(config, index)
    key = config_key(dataclasses.replace(config, num_users=0), GENERATOR_VERSION)
    path = cache_root(config.cache_dir) / "synthetic-users" / key / f"{index}.npz"
    if path.is_file():
        return load_windows(path)
    windows = synthetic_user_windows(config, index)
    save_windows(windows, path)
    return windows
