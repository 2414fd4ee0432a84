"""Seeds: one derivation for every random stream, and one call that seeds the globals."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(base: int, *parts: int) -> int:
    """A 32-bit seed that depends only on ``base`` and ``parts`` (e.g. round, node)."""
    return int(np.random.SeedSequence([base, *parts]).generate_state(1)[0])


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, numpy's and torch's global generators; return one for the data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
