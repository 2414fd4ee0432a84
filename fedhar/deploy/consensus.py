"""Segment consensus for long activities (Temporal Segment Networks, Wang et al. 2016).

A bout (a run of windows with one activity) is split into K equal segments; one snippet, the
window at each segment's centre, is scored, and the K class scores are averaged. Dense
multi-crop testing scores and averages every window of the bout.
"""

from __future__ import annotations

import numpy as np


def bouts(labels: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each maximal run of one label in a stream's windows."""
    if len(labels) == 0:
        return []
    edges = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [len(labels)]])
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def snippets(length: int, segments: int) -> np.ndarray:
    """Index of the centre window of each of `segments` equal segments of a bout."""
    if not 1 <= segments <= length:
        raise ValueError(f"need 1 <= segments <= bout length {length}, got {segments}")
    edges = np.linspace(0, length, segments + 1)
    return np.minimum(((edges[:-1] + edges[1:]) / 2).astype(np.int64), length - 1)


def segment_consensus(probabilities: np.ndarray, segments: int | None) -> np.ndarray:
    """The bout's class scores ``(K,)``: the mean over K snippets, or over every window (dense)
    when `segments` is None."""
    if segments is None:
        return probabilities.mean(axis=0)  # type: ignore[no-any-return]
    return probabilities[snippets(len(probabilities), segments)].mean(axis=0)  # type: ignore[no-any-return]
