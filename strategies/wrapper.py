"""The base of every strategy wrapper: hold a strategy and pass each call through to it.

A wrapper (tracking, checkpointing, fleet simulation, compression, encryption) subclasses
`StrategyWrapper` and overrides only the methods whose behaviour it changes. Wrappers stack:
each one's ``strategy`` is the next inner wrapper or the algorithm itself, which is what
``strategies.checkpointing.innermost`` and ``strategies.tracking.collect_round_stats`` walk.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class StrategyWrapper(Strategy):
    """Delegates all five `Strategy` methods to ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy (an algorithm or another wrapper).
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
