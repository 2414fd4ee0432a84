"""Leakage attacks on what a server sees: windows, labels, membership and users."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from torch import nn

from fedhar.data.dataset import WindowDataset
from fedhar.data.synthetic import SyntheticConfig, synthetic_user_windows
from fedhar.models import build_model
from fedhar.privacy.attacks.inversion import InversionConfig, channel_correlation, invert
from fedhar.privacy.attacks.labels import count_accuracy, label_counts, label_of_window
from fedhar.privacy.attacks.membership import (
    lira_scores,
    loss_scores,
    roc_auc,
    tpr_at_fpr,
    train_shadows,
)
from fedhar.privacy.attacks.reidentify import reidentification_accuracy
from fedhar.privacy.defenses import noised, summed
from fedhar.privacy.observe import client_update
from fedhar.train import TrainConfig, train_local

CONFIG = SyntheticConfig(num_users=6, seconds_per_user=120.0, cache=False)


@lru_cache(maxsize=8)
def user(index: int) -> WindowDataset:
    return synthetic_user_windows(CONFIG, index)


class WindowMLP(nn.Module):
    """A dense HAR baseline: every input sample reaches a biased first layer, so one window's
    gradient determines the window (the case gradient inversion is known to solve)."""

    def __init__(self, channels: int = 6, length: int = 128, classes: int = 7) -> None:
        super().__init__()
        self.fc = nn.Linear(channels * length, 64)
        self.act = nn.Sigmoid()
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(x.flatten(1))))


def _window(index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    data = user(0)
    return torch.tensor(data.x[index : index + 1]), torch.tensor(data.y[index : index + 1])


FAST = InversionConfig(iterations=200, restarts=1, distance="l2")


def test_inversion_recovers_an_undefended_single_window_fedsgd_update() -> None:
    torch.manual_seed(0)
    model, (x, y) = WindowMLP(), _window()
    update = client_update(model, x, y, local_steps=1, lr=0.1)
    label = label_of_window(update)
    found = invert(model, update, (6, 128), label, FAST, seed=0)
    assert label == int(y)
    assert channel_correlation(x[0].numpy(), found.window) > 0.9


def test_inversion_unrolls_a_multi_step_fedavg_update() -> None:
    """Three local SGD steps: the attack simulates them (Inverting Gradients) and still
    recovers the window and its label."""
    torch.manual_seed(0)
    model, (x, y) = WindowMLP(), _window()
    update = client_update(model, x, y, local_steps=3, lr=0.1)
    search = InversionConfig(iterations=200, restarts=1, distance="cosine", local_steps=3)
    found = invert(model, update, (6, 128), label_of_window(update), search, seed=0)
    assert label_of_window(update) == int(y)
    assert channel_correlation(x[0].numpy(), found.window) > 0.9


def test_strong_local_dp_noise_breaks_the_inversion() -> None:
    torch.manual_seed(0)
    model, (x, y) = WindowMLP(), _window()
    update = client_update(model, x, y, local_steps=1, lr=0.1)
    clean = invert(model, update, (6, 128), int(y), FAST, seed=0)
    noisy = invert(model, noised(update, clip=1.0, noise_std=0.05, seed=1), (6, 128), int(y),
                   FAST, seed=0)  # fmt: skip
    assert channel_correlation(x[0].numpy(), clean.window) > 0.9
    assert channel_correlation(x[0].numpy(), noisy.window) < 0.5


def test_under_secure_aggregation_the_attack_sees_only_the_sum() -> None:
    """Inverting the sum of 8 clients' updates as if it were one: the result matches none of
    the 8 windows, as a single client's update does."""
    torch.manual_seed(0)
    model = WindowMLP()
    windows = [_window(i * 7) for i in range(8)]
    updates = [client_update(model, x, y, 1, 0.1) for x, y in windows]
    found = invert(model, summed(updates), (6, 128), int(windows[0][1]), FAST, seed=0)
    best = max(channel_correlation(x[0].numpy(), found.window) for x, _ in windows)
    assert best < 0.6


def test_the_bundled_conv_lstm_resists_this_inversion() -> None:
    """A measured property, not a goal: with BatchNorm over one window's time steps, ReLU and
    max pooling, the search finds gradient matches that are not the window."""
    torch.manual_seed(0)
    model, (x, y) = build_model("microbi_convlstm", 6, 7), _window()
    update = client_update(model, x, y, local_steps=1, lr=0.1)
    found = invert(model, update, (6, 128), label_of_window(update), FAST, seed=0)
    assert label_of_window(update) == int(y)
    assert abs(channel_correlation(x[0].numpy(), found.window)) < 0.5


@pytest.mark.parametrize("batch_size", [8, 32])
def test_label_counts_are_exact_on_an_untrained_models_batch_update(batch_size: int) -> None:
    torch.manual_seed(0)
    model = build_model("microbi_convlstm", 6, 7)
    data, auxiliary = user(0), torch.tensor(user(1).x[:64])
    chosen = np.random.default_rng(batch_size).choice(len(data.y), batch_size, replace=False)
    x, y = torch.tensor(data.x[chosen]), torch.tensor(data.y[chosen])
    update = client_update(model, x, y, local_steps=1, lr=0.1)
    counts = label_counts(model, update, batch_size, 0.1, auxiliary)
    true = np.bincount(y.numpy(), minlength=7)
    assert np.array_equal(counts, true)
    assert count_accuracy(counts, true) == 1.0


def test_membership_inference_finds_memorized_windows() -> None:
    """Canaries, as in LiRA's own evaluation: windows given a wrong label are learnt only by
    memorizing them. The target trains on a random half of a pool of non-overlapping windows
    (windows overlap by half, so a training window's neighbour is nearly the same window);
    LiRA's shadows train on other random halves."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    x = np.concatenate([user(i).x[::2] for i in range(3)])
    y = np.concatenate([user(i).y[::2] for i in range(3)])
    y = np.where(rng.random(len(y)) < 0.3, (y + rng.integers(1, 7, len(y))) % 7, y)
    is_member = rng.random(len(y)) < 0.5
    config = TrainConfig(epochs=40, batch_size=16, lr=0.05)
    target = build_model("microbi_convlstm", 6, 7)
    train_local(target, x[is_member], y[is_member], config, seed=0)
    shadows = train_shadows(lambda: build_model("microbi_convlstm", 6, 7), x, y, 8, config, seed=1)
    lira = lira_scores(target, shadows, x, y)
    assert roc_auc(loss_scores(target, x, y), is_member) > 0.6
    assert roc_auc(lira, is_member) > 0.6


def test_auc_and_tpr_at_fpr_on_known_scores() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    is_member = np.array([True, True, True, False, False, False])
    assert roc_auc(scores, is_member) == 1.0
    assert roc_auc(-scores, is_member) == 0.0
    assert roc_auc(np.ones(6), is_member) == 0.5  # ties count half
    assert tpr_at_fpr(scores, is_member, 0.0) == 1.0
    mixed = np.array([0.9, 0.2, 0.7, 0.8, 0.1, 0.3])  # one non-member outscores two members
    assert tpr_at_fpr(mixed, is_member, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(mixed, is_member, 0.34) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_auc(scores, np.ones(6, dtype=bool))


def test_users_are_reidentified_from_embeddings_above_chance() -> None:
    torch.manual_seed(0)
    model = build_model("microbi_convlstm", 6, 7)
    train_local(model, np.concatenate([user(i).x for i in range(4)]),
                np.concatenate([user(i).y for i in range(4)]),
                TrainConfig(epochs=5, batch_size=32, lr=0.05), seed=0)  # fmt: skip
    enrol = {str(i): user(i).x[: len(user(i).y) // 2] for i in range(4)}
    probe = {str(i): user(i).x[len(user(i).y) // 2 :] for i in range(4)}
    assert reidentification_accuracy(model, enrol, probe) > 1.4 * 0.25  # chance: 1 in 4


def test_label_counts_from_a_noised_update_still_sum_to_the_batch() -> None:
    torch.manual_seed(0)
    model = build_model("microbi_convlstm", 6, 7)
    x, y = torch.tensor(user(0).x[:16]), torch.tensor(user(0).y[:16])
    update = noised(client_update(model, x, y, 1, 0.1), clip=1.0, noise_std=5.0, seed=0)
    counts = label_counts(model, update, 16, 0.1, torch.tensor(user(1).x[:32]))
    assert counts.sum() == 16 and (counts >= 0).all()
    assert 0.0 <= count_accuracy(counts, np.bincount(y.numpy(), minlength=7)) <= 1.0
