"""New users adapt on k labelled windows per class and are tested on what follows them."""

from __future__ import annotations

import numpy as np

from fedhar.data.dataset import WindowDataset
from fedhar.data.splits import window_duration_s


def few_shot_split(
    windows: WindowDataset, k: int, test_after_s: float | None = None, gap_s: float | None = None
) -> tuple[WindowDataset, WindowDataset]:
    """The user's first ``k`` windows of each class (by start time), and the test windows.

    Test windows start at least ``gap_s`` (default: one window) after the last adaptation
    window ends, so no adaptation sample lies inside or next to a test window. Pass the
    cut of a larger k as ``test_after_s`` to test every k on the same windows.
    """
    if k < 1:
        raise ValueError(f"k={k}: few-shot adaptation needs at least one window per class")
    duration = window_duration_s(windows)
    gap = duration if gap_s is None else gap_s
    if gap < duration:
        raise ValueError(f"gap_s={gap} is shorter than one window ({duration} s)")
    order = np.argsort(windows.start_time_s, kind="stable")
    chosen: list[int] = []
    for label in np.unique(windows.y):
        chosen.extend(order[windows.y[order] == label][:k].tolist())
    adapt = np.zeros(len(windows), dtype=bool)
    adapt[chosen] = True
    cut = shot_cut(windows, k, gap)
    if test_after_s is not None:
        if test_after_s < cut:
            raise ValueError(f"test_after_s={test_after_s} falls before k={k}'s cut {cut}")
        cut = test_after_s
    return windows.select(adapt), windows.select(windows.start_time_s >= cut)


def shot_cut(windows: WindowDataset, k: int, gap_s: float | None = None) -> float:
    """The earliest start a test window may have after ``k`` shots per class."""
    duration = window_duration_s(windows)
    gap = duration if gap_s is None else gap_s
    order = np.argsort(windows.start_time_s, kind="stable")
    ends = [
        windows.start_time_s[order[windows.y[order] == label][:k]].max() + duration
        for label in np.unique(windows.y)
    ]
    return float(max(ends)) + gap
