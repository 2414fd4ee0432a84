"""Sample-level DP-SGD with Opacus: per-window clipping, noise, accounting, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedhar.models import ModelShape
from fedhar.privacy.accounting import sample_level_epsilon
from fedhar.privacy.dpsgd import DpSgd, DpSgdUnsupported, planned_steps, train_dp_sgd
from fedhar.train import TrainConfig, train_local

SHAPE = ModelShape("deepconvlstm", 3, 4, 32)


def _data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (10 * rng.standard_normal((n, 3, 32))).astype(np.float32), rng.integers(0, 4, n)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return SHAPE.build(0.25)


def _change(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    after = model.state_dict()
    return float(torch.sqrt(sum(((after[k] - v) ** 2).sum() for k, v in before.items())))


def test_epsilon_matches_opacus_own_accountant_within_one_percent() -> None:
    history = [(0.1, 30), (0.25, 12), (0.1, 30)]
    opacus = RDPAccountant()
    opacus.history = [(1.1, rate, steps) for rate, steps in history]
    expected = opacus.get_epsilon(1e-5)
    assert sample_level_epsilon(1.1, history, 1e-5) == pytest.approx(expected, rel=0.01)
    assert sample_level_epsilon(1.1, history[:1], 1e-5) < expected  # composition grows


def test_each_window_gradient_is_clipped() -> None:
    """One full-batch step at lr 1: the update is the mean of clipped gradients (norm <= C)."""
    x, y = _data()
    config = TrainConfig(epochs=1, batch_size=len(x), lr=1.0, momentum=0.0)
    plain, private = _model(), _model()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    train_local(plain, x, y, config, seed=0)
    train_dp_sgd(private, x, y, config, DpSgd(noise_multiplier=1e-6, max_grad_norm=0.01), 0)
    assert _change(before, plain) > 0.1  # an unclipped step moves far
    assert 0 < _change(before, private) <= 0.01 + 1e-6


def test_noise_has_the_configured_scale() -> None:
    x, y = _data()
    config = TrainConfig(epochs=1, batch_size=len(x), lr=1.0, momentum=0.0)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dims = sum(p.numel() for p in model.parameters())
    train_dp_sgd(model, x, y, config, DpSgd(noise_multiplier=4.0, max_grad_norm=1.0), 0)
    expected = 4.0 * 1.0 * np.sqrt(dims) / len(x)  # noise std z*C on the sum, over the batch
    assert _change(before, model) == pytest.approx(expected, rel=0.1)


def test_dp_sgd_is_reproducible_and_counts_its_steps() -> None:
    x, y = _data(40)
    config = TrainConfig(epochs=2, batch_size=8)
    first, second = _model(), _model()
    result = train_dp_sgd(first, x, y, config, DpSgd(1.0, 1.0), seed=3)
    train_dp_sgd(second, x, y, config, DpSgd(1.0, 1.0), seed=3)
    assert (result.sample_rate, result.steps) == planned_steps(40, config) == (0.2, 10)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name


@pytest.mark.parametrize("model", ["microbi_convlstm", "dscnn"])
def test_batchnorm_models_are_refused_with_the_fix(model: str) -> None:
    x, y = _data()
    with pytest.raises(DpSgdUnsupported, match=r"BatchNorm1d.*model=deepconvlstm"):
        train_dp_sgd(ModelShape(model, 3, 4, 32).build(1.0), x, y, TrainConfig(), DpSgd(1, 1), 0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="noise_multiplier > 0"):
        DpSgd(noise_multiplier=0.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="delta"):
        DpSgd(1.0, 1.0, delta=2.0)
