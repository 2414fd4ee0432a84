"""Local training loop: determinism, frozen parameters, the proximal term, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedhar.seeding import derive_seed
from fedhar.train import TrainConfig, evaluate, train_head_first, train_local


def _problem(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 2, 16)).astype(np.float32)
    x[:, 0, :] += y[:, None]  # class shifts channel 0: learnable
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_same_seed_same_weights_and_training_helps() -> None:
    x, y = _problem()
    a, b = _model(), _model()
    before = evaluate(a, x, y, 3).loss
    train_local(a, x, y, TrainConfig(epochs=5, batch_size=16, lr=0.1), seed=3)
    train_local(b, x, y, TrainConfig(epochs=5, batch_size=16, lr=0.1), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    after = evaluate(a, x, y, 3)
    assert after.loss < before and after.macro_f1 > 0.8


def test_frozen_parameters_do_not_move() -> None:
    x, y = _problem()
    model = _model()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    train_local(model, x, y, TrainConfig(epochs=2, batch_size=16), seed=0)
    assert torch.equal(model[0].weight, frozen)


def test_proximal_term_keeps_weights_closer_to_the_global_model() -> None:
    x, y = _problem()
    start = [p.detach().clone() for p in _model().parameters()]
    drift = {}
    for mu in (0.0, 5.0):
        model = _model()
        train_local(model, x, y, TrainConfig(epochs=3, batch_size=16, lr=0.1, proximal_mu=mu), 0)
        drift[mu] = sum(
            float((p - s).detach().norm()) for p, s in zip(model.parameters(), start, strict=True)
        )
    assert drift[5.0] < drift[0.0]


def test_batch_size_one_trains_every_window_and_max_steps_caps() -> None:
    x, y = _problem(10)
    assert train_local(_model(), x, y, TrainConfig(batch_size=1), 0).num_steps == 10
    assert (
        train_local(_model(), x, y, TrainConfig(epochs=3, batch_size=1, max_steps=4), 0).num_steps
        == 4
    )


def test_empty_data_is_refused() -> None:
    with pytest.raises(ValueError, match="no training windows"):
        train_local(_model(), np.zeros((0, 2, 16), np.float32), np.zeros(0, int), TrainConfig(), 0)
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(1, 3)


def test_head_first_trains_the_head_then_the_body_and_respects_frozen_layers() -> None:
    x, y = _problem()
    model = nn.Sequential()
    model.add_module("body", _model()[0])
    model.add_module("act", nn.ReLU())
    model.add_module("pool", nn.AdaptiveAvgPool1d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(4, 3))
    model.body.bias.requires_grad_(False)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head_only = train_head_first(model, x, y, TrainConfig(epochs=0), head_epochs=2, seed=0)
    assert head_only.num_steps > 0
    assert torch.equal(model.body.weight, before["body.weight"])
    assert not torch.equal(model.head.weight, before["head.weight"])
    head_after = model.head.weight.detach().clone()
    train_head_first(model, x, y, TrainConfig(epochs=1), head_epochs=0, seed=0)
    assert torch.equal(model.head.weight, head_after)  # body phase leaves the head alone
    assert not torch.equal(model.body.weight, before["body.weight"])
    assert torch.equal(model.body.bias, before["body.bias"])  # frozen by the plan: stays
    assert not model.body.bias.requires_grad and model.head.weight.requires_grad
