"""Synthetic generator: determinism, shapes, units, imbalance and per-user differences."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedhar.data.splits import split_chronological
from fedhar.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, load_synthetic

SMALL = SyntheticConfig(num_users=3, seconds_per_user=60, seed=7)


def test_same_seed_same_data_and_shapes():
    a, b = load_synthetic(SMALL), load_synthetic(SMALL)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, load_synthetic(SyntheticConfig(**{**vars(SMALL), "seed": 8})).x)
    assert a.x.dtype == np.float32 and a.x.shape[1:] == (6, 128)
    assert a.users == ["u00", "u01", "u02"]
    assert a.class_names == SYNTHETIC_CLASSES and a.sampling_rate_hz == 50.0
    # 60 s at 50 Hz, windows of 128 with stride 64 -> 45 per user
    assert len(a) == 3 * ((60 * 50 - 128) // 64 + 1)


def test_users_do_not_depend_on_user_count():
    few = load_synthetic(SMALL)
    more = load_synthetic(SyntheticConfig(**{**vars(SMALL), "num_users": 5}))
    np.testing.assert_array_equal(few.for_user("u01").x, more.for_user("u01").x)


def test_units_gravity_at_rest_and_motion_when_moving():
    ds = load_synthetic(SyntheticConfig(num_users=4, seconds_per_user=120, imbalance_alpha=None))
    acc_mean = ds.x[:, :3].mean(-1)  # (N, 3) g
    rest = np.isin(ds.y, [4, 5, 6])
    deviation = np.abs(np.linalg.norm(acc_mean[rest], axis=1) - 1.0)
    assert np.median(deviation) < 0.05
    assert np.mean(deviation < 0.1) > 0.9  # the rest straddle a posture change
    motion = ds.x[:, :3].std(-1).sum(1)  # (N,)
    walking, running = ds.y == 0, ds.y == 1
    assert np.median(motion[walking]) > 5 * np.median(motion[rest])
    assert np.median(motion[running]) > 1.5 * np.median(motion[walking])
    gyro = np.abs(ds.x[:, 3:]).max(-1).max(-1)  # rad/s
    assert gyro.max() < 10


def test_imbalance_alpha_skews_user_classes_and_label_noise_flips():
    skewed = load_synthetic(SyntheticConfig(num_users=6, imbalance_alpha=0.2, seed=0))
    even = load_synthetic(SyntheticConfig(num_users=6, imbalance_alpha=None, seed=0))

    def top_share(ds):
        return np.mean(
            [np.bincount(ds.for_user(u).y).max() / len(ds.for_user(u)) for u in ds.users]
        )

    assert top_share(skewed) > top_share(even) + 0.2
    noisy = load_synthetic(SyntheticConfig(num_users=6, imbalance_alpha=None, label_noise=0.3))
    flipped = np.mean(noisy.y != even.y)
    np.testing.assert_array_equal(noisy.x, even.x)
    assert 0.2 < flipped < 0.4


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> nn.Module:
    """A tiny 1-D CNN trained with Adam; enough to read posture and gait."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv1d(6, 16, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(16, 16, 5, padding=2, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, len(SYNTHETIC_CLASSES)),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(15):
        perm = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), 64):
            batch = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            opt.step()
    return model


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_personalization_matters():
    config = SyntheticConfig(
        num_users=8, seconds_per_user=240, imbalance_alpha=None, mean_segment_s=8, seed=3
    )
    train, test = split_chronological(load_synthetic(config), test_fraction=0.3)
    gaps = []
    for user in ("u00", "u01", "u02"):
        others, own, held = (
            train.select(train.user != user),
            train.for_user(user),
            test.for_user(user),
        )
        # the user's own windows repeated so they weigh like one of several users
        x_with = np.concatenate([others.x, *[own.x] * 3])
        y_with = np.concatenate([others.y, *[own.y] * 3])
        global_acc = accuracy(fit(others.x, others.y), held.x, held.y)
        personal_acc = accuracy(fit(x_with, y_with), held.x, held.y)
        gaps.append(personal_acc - global_acc)
    assert np.mean(gaps) > 0.1, gaps
