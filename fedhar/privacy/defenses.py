"""What the server sees of an update under each defense: quantized, clipped, noised, summed."""

from __future__ import annotations

import numpy as np
import torch

from fedhar.privacy.observe import Update, update_norm
from fedhar.transport.codec import CodecConfig, decode_update, encode_update


def quantized(update: Update, bits: int, seed: int) -> Update:
    """The update as the codec's per-channel stochastic quantization delivers it."""
    encoded, _ = encode_update(update, CodecConfig(bits), np.random.default_rng(seed))
    decoded = decode_update(encoded, {n: tuple(t.shape) for n, t in update.items()}, bits)
    return {n: decoded[n].to(update[n].dtype) for n in update}


def clipped(update: Update, norm: float) -> Update:
    """The update scaled to L2 norm at most ``norm`` (what clipping DP sends or keeps)."""
    scale = min(1.0, norm / max(update_norm(update), 1e-12))
    return {n: t * scale for n, t in update.items()}


def noised(update: Update, clip: float, noise_std: float, seed: int) -> Update:
    """Clipped, plus Gaussian noise of ``noise_std`` on every coordinate (local DP)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        n: t + noise_std * torch.randn(t.shape, generator=generator, dtype=t.dtype)
        for n, t in clipped(update, clip).items()
    }


def summed(updates: list[Update]) -> Update:
    """What secure aggregation reveals: the sum of the cohort's updates."""
    return {n: sum((u[n] for u in updates), torch.zeros_like(updates[0][n])) for n in updates[0]}
