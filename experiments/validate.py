"""Range checks of a run's config before anything starts: each names its key and the fix.

`validate_config` checks every numeric and fraction option the core config and the strategy
groups define; a value of the wrong type or outside its range raises `ConfigError` with the
key as it is written on the command line, e.g. ``strategy.algorithm.fraction_train=1.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.compose import ConfigError


@dataclass(frozen=True)
class Bound:
    """A numeric option: its dotted key, whole number or not, and its admissible range."""

    key: str
    whole: bool
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive unless high_open
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # only some config groups define the key

    def describe(self) -> str:
        """The range in words, e.g. ``a number in (0, 1]``."""
        kind = "a whole number" if self.whole else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return kind

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


BOUNDS = (
    Bound("num_rounds", whole=True, low=1),
    Bound("seed", whole=True, low=0),
    Bound("train.epochs", whole=True, low=1),
    Bound("train.batch_size", whole=True, low=1),
    Bound("train.lr", whole=False, low=0, low_open=True),
    Bound("model.width", whole=False, low=0, high=1, low_open=True),
    Bound("federation.holdout_fraction", whole=False, low=0, high=1, high_open=True),
    Bound("federation.test_fraction", whole=False, low=0, high=1, low_open=True, high_open=True),
    Bound("federation.gap_s", whole=False, low=0),
    Bound("sanitize.max_update_norm", whole=False, low=0, low_open=True, optional=True),
    Bound("sanitize.max_examples_ratio", whole=False, low=1),
    Bound("faults.hang_seconds", whole=False, low=0),
    Bound("runtime.round_timeout_s", whole=False, low=0, low_open=True),
    Bound("runtime.evaluate_share", False, 0, 1, low_open=True, high_open=True),
    Bound("runtime.messages_per_call", whole=True, low=1),
    Bound("runtime.max_failed_rounds", whole=True, low=1),
    Bound("runtime.client_resources.num_cpus", whole=False, low=0, low_open=True),
    Bound("runtime.client_resources.num_gpus", whole=False, low=0),
    Bound("dataset.options.num_users", whole=True, low=2, optional=True),
    Bound("dataset.options.seconds_per_user", whole=False, low=0, low_open=True, optional=True),
    Bound("strategy.algorithm.fraction_train", False, 0, 1, low_open=True, optional=True),
    Bound("strategy.algorithm.fraction_evaluate", whole=False, low=0, high=1, optional=True),
    Bound("strategy.algorithm.min_train_nodes", whole=True, low=1, optional=True),
    Bound("strategy.algorithm.min_evaluate_nodes", whole=True, low=0, optional=True),
    Bound("strategy.algorithm.min_available_nodes", whole=True, low=1, optional=True),
    Bound("strategy.algorithm.proximal_mu", whole=False, low=0, optional=True),
    Bound("strategy.algorithm.stats_timeout_s", whole=False, low=0, low_open=True, optional=True),
)


def _number(value: Any, whole: bool) -> float | None:
    """``value`` as a number when it is one of the right kind (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if whole and not (isinstance(value, int) or float(value).is_integer()):
        return None
    return float(value) if math.isfinite(value) else None


def check(cfg: DictConfig, bound: Bound) -> None:
    """ConfigError unless ``cfg``'s value at ``bound.key`` lies in its range."""
    value = OmegaConf.select(cfg, bound.key, default=None)
    if value is None:
        if bound.optional:
            return
        raise ConfigError(f"{bound.key} is missing: set it to {bound.describe()}")
    number = _number(value, bound.whole)
    if number is None or not bound.admits(number):
        raise ConfigError(f"{bound.key}={value!r} is invalid: it must be {bound.describe()}")


def validate_config(cfg: DictConfig) -> None:
    """Check every range of `BOUNDS`; the first value out of range raises `ConfigError`."""
    for bound in BOUNDS:
        check(cfg, bound)
