"""Causal temporal smoothing of a stream's window predictions: majority vote and an HMM filter.

Both read predictions up to the current window only, as a device must. The HMM forward filter
keeps a belief over activities, moves it with a transition matrix estimated from labelled
streams and weighs it with the classifier's softmax as the emission. (Dividing the softmax by
class priors, the hybrid HMM's scaled likelihood, over-boosts classes that are rare where the
priors are counted but not where the classifier was trained; on the synthetic federation it
halved macro-F1.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def majority_vote(predictions: np.ndarray, history: int) -> np.ndarray:
    """Each window's label as the most frequent of its last `history` predictions (itself
    included); ties go to the label predicted most recently.  # (N,) -> (N,)"""
    if history < 1:
        raise ValueError(f"history must be >= 1 window, got {history}")
    smoothed = np.empty_like(predictions)
    for t in range(len(predictions)):
        recent = predictions[max(0, t - history + 1) : t + 1]
        labels, counts = np.unique(recent, return_counts=True)
        tied = set(labels[counts == counts.max()].tolist())
        smoothed[t] = next(label for label in recent[::-1] if label in tied)
    return smoothed


def transition_matrix(
    label_sequences: Sequence[np.ndarray], num_classes: int, pseudocount: float = 1.0
) -> np.ndarray:
    """Row-stochastic ``(K, K)`` window-to-window transitions counted over label sequences,
    with `pseudocount` added to every entry so no transition is impossible."""
    counts = np.full((num_classes, num_classes), pseudocount, dtype=np.float64)
    for labels in label_sequences:
        np.add.at(counts, (labels[:-1], labels[1:]), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def forward_filter(
    probabilities: np.ndarray,  # (N, K) the classifier's softmax per window
    transition: np.ndarray,  # (K, K) row-stochastic
) -> np.ndarray:
    """Filtered beliefs ``(N, K)``: belief_t ~ p_t * (belief_{t-1} @ transition), from a
    uniform belief before the first window."""
    if probabilities.ndim != 2 or transition.shape != (probabilities.shape[1],) * 2:
        raise ValueError(
            f"probabilities (N, K) {probabilities.shape} and transition (K, K) "
            f"{transition.shape} disagree"
        )
    beliefs = np.empty_like(probabilities, dtype=np.float64)
    belief = np.full(probabilities.shape[1], 1.0 / probabilities.shape[1])
    for t, emission in enumerate(probabilities):
        belief = (belief @ transition) * emission
        belief /= max(belief.sum(), 1e-300)
        beliefs[t] = belief
    return beliefs


def spurious_transitions(predictions: np.ndarray, truth: np.ndarray, tolerance: int = 2) -> int:
    """Changes of the predicted label that match no change of the true label.

    Each true change takes at most one predicted change within `tolerance` windows of it (the
    nearest unmatched one), so a smoother that follows a real change late (a vote over n
    windows lags by about n // 2) is not penalized, and a flicker around one real change
    counts every extra flip.
    """
    predicted = list(np.flatnonzero(predictions[1:] != predictions[:-1]) + 1)
    for change in np.flatnonzero(truth[1:] != truth[:-1]) + 1:
        near = [p for p in predicted if abs(p - change) <= tolerance]
        if near:
            predicted.remove(min(near, key=lambda p: (abs(p - change), p)))
    return len(predicted)
