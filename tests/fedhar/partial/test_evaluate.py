"""Evaluating the global model at each nested width."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhar.models import build_model
from fedhar.partial.evaluate import evaluate_widths, per_window_batchnorm, width_key
from fedhar.partial.spec import extract, scatter, slice_width
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


def _with_statistics(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with running statistics far from any one window's."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 3)
            module.running_var.copy_(torch.rand(channels, generator=generator) * 4 + 0.5)
    return model


@pytest.mark.parametrize("name", ["dscnn", "microbi_convlstm"])
def test_per_window_batchnorm_is_training_on_a_batch_of_one_window(name: str) -> None:
    torch.manual_seed(2)
    model = _with_statistics(build_model(name, C, K), 3)
    x = torch.from_numpy(_data()[0][:5])
    reference = build_model(name, C, K)
    reference.load_state_dict(model.state_dict())
    reference.train()  # batch statistics, as a plan of batch 1 trains (neither model drops out)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.momentum = 0.0  # leave the running statistics as they are
    with torch.no_grad():
        alone = torch.cat([reference(x[i : i + 1]) for i in range(len(x))])
        swapped = per_window_batchnorm(model).eval()
        torch.testing.assert_close(swapped(x), alone, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model.eval()(x), alone, atol=1e-3)  # not the running statistics
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())  # left as it was


def test_per_window_scores_differ_from_the_statistics_scores_and_keep_their_keys() -> None:
    torch.manual_seed(4)
    model = _with_statistics(build_model("dscnn", C, K), 5)
    x, y = _data()
    state = model.state_dict()
    plain = evaluate_widths("dscnn", state, [0.5, 1.0], x, y, K)
    windowed = evaluate_widths("dscnn", state, [0.5, 1.0], x, y, K, per_window=True)
    assert set(windowed) == set(plain)
    assert windowed[width_key(1.0, "loss")] != plain[width_key(1.0, "loss")]
    expected = evaluate(per_window_batchnorm(model), x, y, K)
    assert windowed[width_key(1.0, "loss")] == pytest.approx(expected.loss)
    small = build_model("dscnn", C, K, 0.5)
    small.load_state_dict(extract(state, slice_width(model, small, 0.5)))
    narrow = evaluate(per_window_batchnorm(small), x, y, K)
    assert windowed[width_key(0.5, "loss")] == pytest.approx(narrow.loss)


@pytest.mark.parametrize(
    "layer",
    [
        torch.nn.BatchNorm1d(3, affine=False),
        torch.nn.BatchNorm1d(3, track_running_stats=False),
    ],
    ids=["no-affine", "no-running-statistics"],
)
def test_per_window_batchnorm_matches_any_batchnorm_on_one_window(
    layer: torch.nn.BatchNorm1d,
) -> None:
    x = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(6)) * 2 + 1
    swapped = per_window_batchnorm(torch.nn.Sequential(layer))
    layer.train()
    with torch.no_grad():
        alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(swapped(x), alone, rtol=1e-4, atol=1e-5)


def test_per_window_batchnorm_needs_windows() -> None:
    norm = per_window_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(4)))
    with pytest.raises(ValueError, match=r"needs \(B, C, T\) inputs"):
        norm(torch.zeros(2, 4))
