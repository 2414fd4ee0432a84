"""Segment consensus scores a bout from K snippets."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.deploy.consensus import bouts, segment_consensus, snippets


def test_bouts_are_maximal_runs_of_one_label() -> None:
    assert bouts(np.array([0, 0, 1, 1, 1, 0])) == [(0, 2), (2, 5), (5, 6)]
    assert bouts(np.array([], dtype=np.int64)) == []


def test_snippets_are_segment_centres() -> None:
    np.testing.assert_array_equal(snippets(10, 5), [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(snippets(10, 1), [5])
    np.testing.assert_array_equal(snippets(3, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="segments"):
        snippets(3, 4)


def test_consensus_outvotes_wrong_windows_and_dense_is_the_mean() -> None:
    probs = np.tile([0.2, 0.8], (9, 1))
    probs[[0, 4, 8]] = [0.9, 0.1]  # three confident mistakes, one of them a snippet centre
    assert segment_consensus(probs, 1).argmax() == 0  # the centre alone is wrong
    assert segment_consensus(probs, 3).argmax() == 1
    np.testing.assert_allclose(segment_consensus(probs, None), probs.mean(axis=0))
