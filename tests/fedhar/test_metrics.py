"""Metrics: confusion matrix, macro-F1 over observed classes, per-user summaries."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.metrics import UserScore, confusion_matrix, macro_f1, summarize_users


def test_macro_f1_matches_hand_computation() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    cm = confusion_matrix(y_true, y_pred, num_classes=4)
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: 0; class 3 absent
    assert macro_f1(cm) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert cm.sum() == 5


def test_summary_worst_decile_and_median() -> None:
    scores = [UserScore(str(i), "d", 10, 0.5, f) for i, f in enumerate(np.linspace(0, 0.9, 10))]
    summary = summarize_users(scores)
    assert summary.worst10_f1 == pytest.approx(0.0)
    assert summary.median_f1 == pytest.approx(0.45)
    assert summary.mean_f1 == pytest.approx(0.45)
    with pytest.raises(ValueError, match="at least one"):
        summarize_users([])
