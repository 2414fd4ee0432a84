"""StrategyWrapper: every Strategy method reaches the wrapped strategy unchanged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.checkpointing import innermost
from strategies.tracking import collect_round_stats
from strategies.wrapper import StrategyWrapper

ARRAYS = ArrayRecord()
METRICS = MetricRecord({"loss": 0.5})
TRAIN_MESSAGES: list[Message] = []  # compared by identity: the wrapper passes the object on
EVALUATE_MESSAGES: list[Message] = []


class Recorder(Strategy):
    """Records each call with its arguments and answers with fixed values."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def summary(self) -> None:
        self.calls.append(("summary", ()))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.calls.append(("configure_train", (server_round, arrays, config, grid)))
        return TRAIN_MESSAGES

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.calls.append(("aggregate_train", (server_round, replies)))
        return ARRAYS, METRICS

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.calls.append(("configure_evaluate", (server_round, arrays, config, grid)))
        return EVALUATE_MESSAGES

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        self.calls.append(("aggregate_evaluate", (server_round, replies)))
        return METRICS

    def round_stats(self) -> dict[str, float]:
        return {"inner": 1.0}


class Counting(StrategyWrapper):
    """Overrides one method only; the rest must still reach the inner strategy."""

    def round_stats(self) -> dict[str, float]:
        return {"outer": 2.0}


def test_every_method_passes_through_with_its_arguments_and_result() -> None:
    inner = Recorder()
    wrapper = StrategyWrapper(inner)
    config, grid = ConfigRecord({"lr": 0.1}), cast(Grid, object())
    replies: list[Message] = []
    assert wrapper.configure_train(3, ARRAYS, config, grid) is TRAIN_MESSAGES
    assert wrapper.aggregate_train(3, replies) == (ARRAYS, METRICS)
    assert wrapper.configure_evaluate(3, ARRAYS, config, grid) is EVALUATE_MESSAGES
    assert wrapper.aggregate_evaluate(3, replies) is METRICS
    wrapper.summary()
    assert inner.calls == [
        ("configure_train", (3, ARRAYS, config, grid)),
        ("aggregate_train", (3, replies)),
        ("configure_evaluate", (3, ARRAYS, config, grid)),
        ("aggregate_evaluate", (3, replies)),
        ("summary", ()),
    ]


def test_stacked_wrappers_are_walked_to_the_algorithm_and_for_round_stats() -> None:
    inner = Recorder()
    stack = Counting(StrategyWrapper(Counting(inner)))
    assert innermost(stack) is inner
    assert collect_round_stats(stack) == {"outer": 2.0, "inner": 1.0}
