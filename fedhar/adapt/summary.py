"""Who gains from personalization: per-user macro-F1 summaries with bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    value: float
    low: float  # 95% bootstrap percentile interval over users
    high: float


def worst_decile(scores: np.ndarray) -> float:
    """Mean of the lowest 10% of users (at least one)."""
    ordered = np.sort(scores)
    return float(ordered[: max(1, int(np.ceil(0.1 * len(ordered))))].mean())


def bootstrap(statistic: Callable[[np.ndarray], float], columns: np.ndarray, seed: int) -> Interval:
    """``statistic`` of the (users, ...) ``columns`` and its 95% interval, resampling users."""
    rng = np.random.default_rng(seed)
    n = len(columns)
    draws = [statistic(columns[rng.integers(0, n, n)]) for _ in range(BOOTSTRAP_SAMPLES)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(statistic(columns), float(low), float(high))


def summarize(
    per_user: Mapping[str, np.ndarray], baseline: str, local: str | None, seed: int = 0
) -> dict[str, dict[str, Interval]]:
    """Per method: mean, median, worst 10%, and, paired per user, the share improved over
    ``baseline`` (the global model) and the share worse than ``local`` (local-only)."""
    summary: dict[str, dict[str, Interval]] = {}
    for method, scores in per_user.items():
        columns = np.stack([scores, per_user[baseline], per_user[local or baseline]], axis=1)
        stats: dict[str, Callable[[np.ndarray], float]] = {
            "mean": lambda c: float(c[:, 0].mean()),
            "median": lambda c: float(np.median(c[:, 0])),
            "worst10": lambda c: worst_decile(c[:, 0]),
        }
        if method != baseline:
            stats["improved"] = lambda c: float((c[:, 0] > c[:, 1]).mean())
        if local is not None and method != local:
            stats["worse_than_local"] = lambda c: float((c[:, 0] < c[:, 2]).mean())
        summary[method] = {name: bootstrap(f, columns, seed) for name, f in stats.items()}
    return summary
