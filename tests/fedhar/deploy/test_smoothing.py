"""Temporal smoothing is causal and removes transient flips."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.deploy.smoothing import (
    forward_filter,
    majority_vote,
    spurious_transitions,
    transition_matrix,
)


def probabilities(labels: np.ndarray, k: int = 3, confidence: float = 0.7) -> np.ndarray:
    p = np.full((len(labels), k), (1 - confidence) / (k - 1))
    p[np.arange(len(labels)), labels] = confidence
    return p


@pytest.mark.parametrize("cut", [1, 7, 15])
def test_smoothing_never_uses_future_windows(cut) -> None:
    rng = np.random.default_rng(cut)
    predictions = rng.integers(0, 3, 20)
    probs = rng.dirichlet(np.ones(3), 20)
    transition = transition_matrix([rng.integers(0, 3, 50)], 3)
    altered = predictions.copy()
    altered[cut:] = rng.integers(0, 3, 20 - cut)
    altered_probs = probs.copy()
    altered_probs[cut:] = rng.dirichlet(np.ones(3), 20 - cut)
    np.testing.assert_array_equal(
        majority_vote(altered, 5)[:cut], majority_vote(predictions, 5)[:cut]
    )
    np.testing.assert_array_equal(
        forward_filter(altered_probs, transition)[:cut], forward_filter(probs, transition)[:cut]
    )


def test_majority_vote_removes_a_one_window_blip_and_breaks_ties_by_recency() -> None:
    predictions = np.array([0, 0, 0, 2, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(majority_vote(predictions, 3), [0, 0, 0, 0, 0, 0, 0, 1, 1])
    assert majority_vote(np.array([0, 1]), 2)[1] == 1  # one each: the latest wins
    with pytest.raises(ValueError, match="history"):
        majority_vote(predictions, 0)


def test_forward_filter_with_sticky_transitions_suppresses_flips() -> None:
    truth = np.array([0] * 10 + [1] * 10)
    noisy = truth.copy()
    noisy[[3, 14]] = 2  # two transient false positives
    sticky = np.full((3, 3), 0.05)
    np.fill_diagonal(sticky, 0.9)
    filtered = forward_filter(probabilities(noisy), sticky).argmax(axis=1)
    assert spurious_transitions(noisy, truth) == 4
    assert spurious_transitions(filtered, truth) == 0
    assert spurious_transitions(filtered, truth, tolerance=0) == 1  # it follows a window late
    np.testing.assert_array_equal(filtered[12:], truth[12:])
    uniform = np.full((3, 3), 1 / 3)  # no memory: the filter is the classifier
    np.testing.assert_array_equal(forward_filter(probabilities(noisy), uniform).argmax(1), noisy)


def test_transition_matrix_counts_window_to_window_moves() -> None:
    matrix = transition_matrix([np.array([0, 0, 0, 1]), np.array([1, 1])], 2, pseudocount=0.0)
    np.testing.assert_allclose(matrix, [[2 / 3, 1 / 3], [0.0, 1.0]])
    smoothed = transition_matrix([np.array([0, 0])], 3)
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0)
    assert smoothed.min() > 0


def test_spurious_transitions_leave_out_real_changes() -> None:
    truth = np.array([0, 0, 1, 1])
    assert spurious_transitions(np.array([0, 0, 1, 1]), truth) == 0
    assert spurious_transitions(np.array([0, 1, 1, 1]), truth) == 0  # a window early
    assert spurious_transitions(np.array([0, 1, 1, 1]), truth, tolerance=0) == 1
    blip = np.array([1, 0, 0, 0, 0, 0, 0, 0, 2, 0])
    assert spurious_transitions(blip, np.zeros(10, np.int64)) == 3
    long_truth = np.array([0] * 8 + [1] * 8)
    late = np.array([0] * 10 + [1] * 6)  # a 5-window vote: the change two windows late
    assert spurious_transitions(late, long_truth) == 0
    flicker = np.array([0] * 7 + [1, 0, 1] + [1] * 6)  # three flips around one real change
    assert spurious_transitions(flicker, long_truth) == 2
