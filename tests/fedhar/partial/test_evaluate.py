"""Evaluating the global model at each nested width."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhar.models import build_model
from fedhar.partial.evaluate import evaluate_widths, width_key
from fedhar.partial.spec import scatter, slice_width
from fedhar.train import evaluate

C, K, T = 6, 5, 32


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, C, T)).astype(np.float32), rng.integers(0, K, 40)


def test_full_width_is_the_global_model_and_narrow_widths_are_its_leading_slices() -> None:
    torch.manual_seed(0)
    model = build_model("dscnn", C, K)
    x, y = _data()
    scores = evaluate_widths("dscnn", model.state_dict(), [1.0, 0.25], x, y, K)
    full = evaluate(model, x, y, K)
    assert scores[width_key(1.0, "macro_f1")] == full.macro_f1
    assert scores[width_key(1.0, "loss")] == full.loss
    assert scores[width_key(0.25, "loss")] != full.loss
    assert set(scores) == {
        width_key(w, m) for w in (0.25, 1.0) for m in ("loss", "accuracy", "macro_f1")
    }


def test_a_width_model_sees_exactly_the_leading_units() -> None:
    torch.manual_seed(1)
    small = build_model("microbi_convlstm", C, K, 0.5)
    full = build_model("microbi_convlstm", C, K)
    spec = slice_width(full, small, 0.5)  # leading units, gate blocks and directions kept
    state, _ = scatter(small.state_dict(), spec, full.state_dict())
    x, y = _data()
    scores = evaluate_widths("microbi_convlstm", state, [0.5], x, y, K)
    assert scores[width_key(0.5, "loss")] == evaluate(small, x, y, K).loss


def test_bad_widths_are_named() -> None:
    x, y = _data()
    state = build_model("dscnn", C, K).state_dict()
    with pytest.raises(ValueError, match="at least one width"):
        evaluate_widths("dscnn", state, [], x, y, K)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        evaluate_widths("dscnn", state, [1.5], x, y, K)
