"""Classification metrics and per-user summaries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class; (K, K) int64."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the true labels or the predictions.

    Classes absent from both are left out, so a user who never performs an activity is not
    scored on it (the convention of scikit-learn with ``labels`` set to the observed classes).
    """
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    f1 = 2.0 * tp / np.maximum(support + predicted, 1)
    return float(f1[present].mean())


def accuracy(confusion: np.ndarray) -> float:
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else 0.0


@dataclass(frozen=True)
class UserScore:
    """One user's evaluation of a model on their own test split."""

    user: str
    device: str
    num_windows: int
    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class PerUserSummary:
    """Distribution of per-user macro-F1: the fleet's typical and worst users."""

    num_users: int
    mean_f1: float
    median_f1: float
    worst10_f1: float  # mean macro-F1 over the worst 10% of users (at least one user)
    mean_accuracy: float

    def as_dict(self) -> dict[str, float]:
        return {
            "num_users": float(self.num_users),
            "mean_f1": self.mean_f1,
            "median_f1": self.median_f1,
            "worst10_f1": self.worst10_f1,
            "mean_accuracy": self.mean_accuracy,
        }


def summarize_users(scores: list[UserScore]) -> PerUserSummary:
    """Mean, median and worst-10% macro-F1 over users (each user weighs the same)."""
    if not scores:
        raise ValueError("summarize_users needs at least one user score")
    f1 = np.sort(np.array([s.macro_f1 for s in scores]))
    worst_count = max(1, int(np.ceil(0.1 * len(f1))))
    return PerUserSummary(
        num_users=len(scores),
        mean_f1=float(f1.mean()),
        median_f1=float(np.median(f1)),
        worst10_f1=float(f1[:worst_count].mean()),
        mean_accuracy=float(np.mean([s.accuracy for s in scores])),
    )
