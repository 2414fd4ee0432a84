"""StrategyWrapper: every Strategy method reaches the wrapped strategy unchanged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedhar.records import ClientFailure
from strategies.tracking import collect_rejections, collect_round_stats
from strategies.wrapper import StrategyWrapper, innermost, wrapper_chain

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
        """Not a RoundReport: tracking must not call this duck-typed method."""
        return {"inner": 1.0}


class Counting(StrategyWrapper):
    """Reports one accepted reply and one rejection per round, under ``counting/``."""

    prefix = "counting"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.start_round()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.accept()
        self.reject(7, "forged", "the weight does not match")
        self.count("bytes", 10)
        return super().aggregate_train(server_round, replies)


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
    counting = Counting(inner)
    stack = StrategyWrapper(counting)
    assert innermost(stack) is inner
    assert list(wrapper_chain(stack)) == [stack, counting, inner]
    assert collect_round_stats(stack) == {}  # nothing counted yet; the Recorder is ignored
    stack.configure_train(1, ARRAYS, ConfigRecord(), cast(Grid, object()))
    stack.aggregate_train(1, [])
    assert collect_round_stats(stack) == {
        "counting/accepted": 1.0,
        "counting/bytes": 10.0,
        "counting/rejected": 1.0,
        "counting/rejected/forged": 1.0,
    }
    assert collect_rejections(stack) == (
        ClientFailure(7, "counting rejected forged: the weight does not match"),
    )


def test_a_new_round_forgets_the_last_rounds_report() -> None:
    counting = Counting(Recorder())
    counting.configure_train(1, ARRAYS, ConfigRecord(), cast(Grid, object()))
    counting.aggregate_train(1, [])
    counting.configure_train(2, ARRAYS, ConfigRecord(), cast(Grid, object()))
    assert counting.round_stats() == {"counting/accepted": 0.0, "counting/rejected": 0.0}
    assert counting.round_rejections() == []
