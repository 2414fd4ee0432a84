"""Train/test splits: chronological within each user, or disjoint across users."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from fedhar.data.dataset import WindowDataset

logger = logging.getLogger(__name__)


def window_duration_s(ds: WindowDataset) -> float:
    """Time one window spans: `window_length / sampling_rate_hz` seconds."""
    return ds.x.shape[-1] / ds.sampling_rate_hz


def _check_split(test_fraction: float, gap_s: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if gap_s < 0:
        raise ValueError(f"gap_s must be >= 0, got {gap_s}")


def split_chronological(
    ds: WindowDataset, test_fraction: float, gap_s: float = 0.0
) -> tuple[WindowDataset, WindowDataset]:
    """Per user, the last `test_fraction` of windows (by start time) become the test set.

    The cut is per user across all devices, so simultaneous phone and watch windows land on
    the same side. Train windows must end at least `gap_s` seconds before the first test
    window starts; windows that would overlap the test period are dropped, so no train
    sample is ever inside a test window. A user with fewer than two windows stays in train,
    with a warning.

    Parameters
    ----------
    ds : WindowDataset
        Windows with absolute or per-user start times.
    test_fraction : float
        Share of each user's windows held out, in (0, 1).
    gap_s : float
        Extra margin between the last train sample and the first test sample.
    """
    _check_split(test_fraction, gap_s)
    duration = window_duration_s(ds)
    train = np.zeros(len(ds), dtype=bool)
    test = np.zeros(len(ds), dtype=bool)
    for user in ds.users:
        idx = np.flatnonzero(ds.user == user)
        if len(idx) < 2:
            logger.warning(
                "user %s has %d window(s), too few to split; all kept in train, none in test",
                user,
                len(idx),
            )
            train[idx] = True
            continue
        starts = np.sort(ds.start_time_s[idx])
        n_test = min(max(1, round(test_fraction * len(idx))), len(idx) - 1)
        cut = starts[len(idx) - n_test]  # first test window start
        test[idx] = ds.start_time_s[idx] >= cut
        train[idx] = ds.start_time_s[idx] + duration + gap_s <= cut
    return ds.select(train), ds.select(test)


def split_bout_heads(
    ds: WindowDataset, test_fraction: float = 0.2, gap_s: float = 0.0
) -> tuple[WindowDataset, WindowDataset]:
    """FedFitTech's protocol: the first ``test_fraction`` of every activity bout is test.

    A bout is a run of one user's windows on one device with the same label, each starting
    at most one window after the previous. Its first ``round(test_fraction * n)`` windows go
    to test; every other window goes to train unless it comes within ``gap_s`` of a test
    window (of its own bout or the next), so no train sample lies inside a test window.
    """
    _check_split(test_fraction, gap_s)
    duration = window_duration_s(ds)
    train = np.zeros(len(ds), dtype=bool)
    test = np.zeros(len(ds), dtype=bool)
    for stream in sorted(set(zip(ds.user.tolist(), ds.device.tolist(), strict=True))):
        idx = np.flatnonzero((ds.user == stream[0]) & (ds.device == stream[1]))
        idx = idx[np.argsort(ds.start_time_s[idx], kind="stable")]
        starts, labels = ds.start_time_s[idx], ds.y[idx]
        breaks = (np.diff(labels) != 0) | (np.diff(starts) > duration)
        heads = np.concatenate(
            [b[: round(test_fraction * len(b))] for b in np.split(idx, np.flatnonzero(breaks) + 1)]
        )
        test[heads] = True
        head_starts = np.sort(ds.start_time_s[heads])
        for i in idx[~np.isin(idx, heads)]:  # kept unless within gap_s of a test window
            start = ds.start_time_s[i]
            near = np.searchsorted(head_starts, start - duration - gap_s, side="right")
            train[i] = near == len(head_starts) or head_starts[near] >= start + duration + gap_s
    return ds.select(train), ds.select(test)


def split_users(
    ds: WindowDataset,
    test_users: Sequence[str] | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> tuple[WindowDataset, WindowDataset]:
    """Split by user: every window of a test user goes to test, the rest to train.

    Give either `test_users` explicitly or `test_fraction` of users drawn with `seed`
    (at least one user on each side).
    """
    users = ds.users
    if (test_users is None) == (test_fraction is None):
        raise ValueError("give exactly one of test_users or test_fraction")
    if test_users is not None:
        unknown = sorted(set(test_users) - set(users))
        if unknown:
            raise ValueError(f"unknown test users {unknown}; dataset users are {users}")
        held_out = sorted(test_users)
    else:
        assert test_fraction is not None
        held_out = draw_test_users(users, test_fraction, seed)
    mask = np.isin(ds.user, held_out)
    return ds.select(~mask), ds.select(mask)


def draw_test_users(users: Sequence[str], test_fraction: float, seed: int = 0) -> list[str]:
    """``test_fraction`` of the (sorted) ``users`` drawn with ``seed``, at least one on each
    side; sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    users = sorted(users)
    if len(users) < 2:
        raise ValueError(f"need at least two users to split, got {users}")
    n_test = min(max(1, round(test_fraction * len(users))), len(users) - 1)
    order = np.random.default_rng(seed).permutation(len(users))
    return sorted(users[i] for i in order[:n_test])
