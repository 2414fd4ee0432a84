"""One deadline per round: every send gets what is left of its phase of the round."""

from __future__ import annotations

import time

import pytest
from flwr.app import Message, MessageType, RecordDict

from strategies.deadline import DeadlineGrid, RoundClock


class Recording:
    """A grid that records the timeout of every send and answers nothing."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        return []


def _messages(kind: str) -> list[Message]:
    return [Message(RecordDict(), 5, kind)]


def test_training_gets_its_share_and_evaluation_what_is_left_of_the_round() -> None:
    clock, inner = RoundClock(budget_s=100.0, evaluate_share=0.25), Recording()
    grid = DeadlineGrid(inner, clock)  # type: ignore[arg-type]
    grid.send_and_receive(_messages(MessageType.QUERY), timeout=60.0)  # enrollment: untouched
    clock.start()
    grid.send_and_receive(_messages(MessageType.TRAIN), timeout=100.0)
    grid.send_and_receive(_messages(MessageType.EVALUATE), timeout=100.0)
    grid.send_and_receive(_messages(MessageType.EVALUATE), timeout=5.0)
    first, train, evaluate, short = inner.timeouts
    assert first == 60.0
    assert 74.0 < train <= 75.0 and 99.0 < evaluate <= 100.0 and short == 5.0


def test_a_spent_round_leaves_no_time_and_the_next_round_starts_afresh() -> None:
    clock, inner = RoundClock(budget_s=0.2, evaluate_share=0.5), Recording()
    grid = DeadlineGrid(inner, clock)  # type: ignore[arg-type]
    clock.start()
    time.sleep(0.25)
    grid.send_and_receive(_messages(MessageType.TRAIN), timeout=10.0)
    grid.send_and_receive(_messages(MessageType.EVALUATE), timeout=None)
    assert inner.timeouts == [0.0, 0.0]
    clock.start()
    grid.send_and_receive(_messages(MessageType.EVALUATE), timeout=None)
    assert 0.0 < inner.timeouts[-1] <= 0.2


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="budget_s"):
        RoundClock(0)
    with pytest.raises(ValueError, match="evaluate_share"):
        RoundClock(10, evaluate_share=1.0)
