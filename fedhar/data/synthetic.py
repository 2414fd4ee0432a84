"""Synthetic wearable accelerometer + gyroscope data with real per-user differences.

Each user wears the device with their own placement (a rotation of the body frame), walks
with their own cadence, amplitude and harmonic profile, holds postures at their own angles,
and has their own sensor bias and gain. Body frame: x forward, y left, z up; at rest the
accelerometer reads the upward specific force, 1 g along the gravity direction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedhar.data.cache import cached_windows
from fedhar.data.dataset import Recording, WindowDataset, concat_windows
from fedhar.data.windows import window_recordings

SYNTHETIC_CLASSES = (
    "walking",
    "running",
    "stairs_up",
    "stairs_down",
    "sitting",
    "standing",
    "lying",
)
GAIT = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)  # classes with a periodic gait
CADENCE_SCALE = np.array([1.0, 1.55, 0.8, 0.95, 0, 0, 0])  # x walking cadence
AMPLITUDE_SCALE = np.array([1.0, 2.6, 1.3, 1.2, 0, 0, 0])  # x walking amplitude
LEAN_DEG = np.array([5.0, 12.0, 15.0, -6.0, 0, 0, 0])  # forward trunk lean while moving
IMPACT = np.array([1.0, 1.5, 0.7, 2.2, 0, 0, 0])  # weight on harmonics 3-4 (heel strikes)

GENERATOR_VERSION = "2"  # bump when the generator changes, so cached windows are rebuilt


@dataclass(frozen=True)
class SyntheticConfig:
    """Options of the synthetic generator; the same config always gives the same data."""

    num_users: int = 10
    seconds_per_user: float = 300.0
    rate_hz: float = 50.0
    window_length: int = 128  # 2.56 s at 50 Hz, the UCI-HAR window
    stride: int = 64  # 50 % overlap
    imbalance_alpha: float | None = 1.0  # Dirichlet alpha of per-user class shares; None: equal
    label_noise: float = 0.0  # share of windows whose label is replaced by another class
    placement_spread_deg: float = 45.0  # max rotation of a user's device placement
    mean_segment_s: float = 20.0  # mean duration of one activity bout
    acc_noise_g: float = 0.02
    gyro_noise_rad_s: float = 0.02
    seed: int = 0
    cache: bool = True  # keep the windows on disk: simulation workers reload them cheaply
    cache_dir: str | None = None


def random_rotation(rng: np.random.Generator, max_angle_rad: float) -> np.ndarray:
    """Rotation matrix (3, 3) about a random axis by an angle uniform in [0, max_angle_rad]."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(0.0, max_angle_rad)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def posture_gravity(rng: np.random.Generator) -> np.ndarray:
    """Per-user upward unit vector (K, 3) in the body frame for each class."""
    lean = np.deg2rad(LEAN_DEG + rng.normal(0, 3, size=len(LEAN_DEG)))
    gravity = np.stack([np.sin(lean), np.zeros_like(lean), np.cos(lean)], axis=1)
    sit = np.deg2rad(rng.uniform(55, 85))  # thigh pitch when seated
    gravity[4] = [np.sin(sit), 0.0, np.cos(sit)]
    gravity[5] = [np.sin(np.deg2rad(rng.normal(0, 3))), 0.0, 1.0]
    roll = np.deg2rad(rng.uniform(70, 100)) * rng.choice([-1.0, 1.0])  # lying on one side
    gravity[6] = [0.1, np.sin(roll), np.cos(roll)]
    return gravity / np.linalg.norm(gravity, axis=1, keepdims=True)


def label_sequence(rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """Per-sample class indices (T,): bouts of random length drawn from user class shares."""
    k = len(SYNTHETIC_CLASSES)
    if config.imbalance_alpha is None:
        shares = np.full(k, 1.0 / k)
    else:
        shares = rng.dirichlet(np.full(k, config.imbalance_alpha))
    total = round(config.seconds_per_user * config.rate_hz)
    labels, filled = [], 0
    while filled < total:
        n = max(1, int(rng.uniform(0.5, 1.5) * config.mean_segment_s * config.rate_hz))
        labels.append(np.full(min(n, total - filled), rng.choice(k, p=shares)))
        filled += n
    return np.concatenate(labels).astype(np.int64)


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Moving average along axis 0 with edge padding (T, D) -> (T, D)."""
    padded = np.pad(values, ((width // 2, width - 1 - width // 2), (0, 0)), mode="edge")
    cs = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(padded, axis=0)])
    return (cs[width:] - cs[:-width]) / width


def generate_user(config: SyntheticConfig, index: int) -> Recording:
    """One continuous recording of user `index`; independent of the other users' draws."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    labels = label_sequence(rng, config)  # (T,)
    t = np.arange(len(labels)) / config.rate_hz  # (T,)
    rotation = random_rotation(rng, np.deg2rad(config.placement_spread_deg))
    gravity_table = posture_gravity(rng)  # (K, 3)
    walk_cadence = rng.uniform(1.6, 2.1)  # steps per second
    walk_amp = rng.uniform(0.18, 0.4)  # g, vertical
    harmonics = np.concatenate([[1.0], rng.uniform(0.05, 0.6, size=3)])  # (4,)
    phases = rng.uniform(0, 2 * np.pi, size=(3, 4))  # per axis, per harmonic
    swing = rng.uniform(0.8, 1.6)  # rad/s, leg pitch rate while walking
    axis_mix = rng.uniform([0.35, 0.15], [0.7, 0.45])  # forward, lateral share of vertical

    cadence = CADENCE_SCALE[labels] * walk_cadence  # (T,)
    phase = 2 * np.pi * np.cumsum(cadence) / config.rate_hz  # (T,) continuous across bouts
    amp = AMPLITUDE_SCALE[labels] * walk_amp  # (T,)
    weights = np.tile(harmonics, (len(labels), 1))  # (T, 4)
    weights[:, 2:] *= IMPACT[labels][:, None]
    k = np.arange(1, 5)
    waves = [
        (weights * np.cos(k * phase[:, None] + phases[axis])).sum(1) for axis in range(3)
    ]  # 3 x (T,)
    dyn_acc = amp[:, None] * np.stack(
        [axis_mix[0] * waves[0], axis_mix[1] * np.sin(phase / 2 + phases[1, 0]), waves[2]],
        axis=1,
    )  # (T, 3) body frame, g
    gait = GAIT[labels].astype(np.float64)  # (T,)
    gyro_amp = swing * AMPLITUDE_SCALE[labels] ** 0.7  # (T,)
    dyn_gyro = gyro_amp[:, None] * np.stack(
        [0.3 * np.sin(phase + phases[0, 1]), np.sin(phase / 2), 0.2 * np.sin(phase / 2 + 1.0)],
        axis=1,
    )  # (T, 3) rad/s
    sway = smooth(rng.normal(0, 0.02, size=(len(t), 3)), int(config.rate_hz))  # (T, 3)

    up = smooth(gravity_table[labels], max(1, int(config.rate_hz / 2)))  # (T, 3)
    up /= np.linalg.norm(up, axis=1, keepdims=True)
    acc_body = up + gait[:, None] * dyn_acc + sway
    gyro_body = gait[:, None] * dyn_gyro + sway
    gain = rng.uniform(0.95, 1.05, size=6)
    bias = np.concatenate([rng.normal(0, 0.03, 3), rng.normal(0, 0.02, 3)])
    noise_scale = np.repeat([config.acc_noise_g, config.gyro_noise_rad_s], 3)
    signals = np.concatenate([acc_body @ rotation.T, gyro_body @ rotation.T], axis=1)  # (T, 6)
    signals = signals * gain + bias + rng.normal(size=signals.shape) * noise_scale
    return Recording(
        user=synthetic_user_name(index),
        device="synthetic",
        time_s=t,
        signals=signals.astype(np.float32),
        labels=labels,
    )


def synthetic_user_name(index: int) -> str:
    """User ``index``'s name: ``u00``, ``u01``, ..."""
    return f"u{index:02d}"


def synthetic_user_windows(config: SyntheticConfig, index: int) -> WindowDataset:
    """User ``index``'s windows, with `label_noise` applied (drawn for this user alone)."""
    if not 0.0 <= config.label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {config.label_noise}")
    ds = window_recordings(
        [generate_user(config, index)],
        config.window_length,
        config.stride,
        SYNTHETIC_CLASSES,
        config.rate_hz,
    )
    if config.label_noise == 0.0:
        return ds
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2**31, index]))
    flip = rng.random(len(ds)) < config.label_noise
    shift = rng.integers(1, ds.num_classes, size=len(ds))  # never the true class
    noisy = np.where(flip, (ds.y + shift) % ds.num_classes, ds.y)
    return replace(ds, y=noisy)


def load_synthetic(config: SyntheticConfig) -> WindowDataset:
    """Every user's windows (`synthetic_user_windows`), in user order."""
    if not 0.0 <= config.label_noise < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {config.label_noise}")
    return cached_windows(config, lambda: _build(config), fingerprint=GENERATOR_VERSION)


def _build(config: SyntheticConfig) -> WindowDataset:
    return concat_windows([synthetic_user_windows(config, i) for i in range(config.num_users)])
