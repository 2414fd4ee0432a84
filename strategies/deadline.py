"""One deadline per round, covering training and evaluation.

Flower's ``Strategy.start`` gives every ``send_and_receive`` the whole timeout, so a round with
a stalled client could take twice ``runtime.round_timeout_s``. `RoundClock` starts when a
round's training is configured (`strategies.tracking.Tracking` starts it); `DeadlineGrid`, the
grid the strategy runs on, cuts each send's timeout to what is left: everything before
evaluation (training, secure-aggregation stages, the static-BatchNorm query) must end within
``1 - evaluate_share`` of the round's budget, evaluation within the whole of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedhar.wire import message_kind
from strategies.grid_proxy import GridProxy


class RoundClock:
    """The current round's deadline: ``budget_s`` seconds from `start`."""

    def __init__(self, budget_s: float, evaluate_share: float = 0.5) -> None:
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")
        if not 0 < evaluate_share < 1:
            raise ValueError(f"evaluate_share must lie in (0, 1), got {evaluate_share}")
        self.budget_s, self.evaluate_share = float(budget_s), float(evaluate_share)
        self._started: float | None = None

    def start(self) -> None:
        """A round begins (its training is being configured)."""
        self._started = time.monotonic()

    def timeout_for(self, messages: list[Message], requested: float | None) -> float | None:
        """The timeout a send of ``messages`` gets: what is left of its phase, at most
        ``requested``; ``requested`` itself before the first round starts."""
        if self._started is None:
            return requested
        evaluating = any(message_kind(m) == MessageType.EVALUATE for m in messages)
        phase = 1.0 if evaluating else 1.0 - self.evaluate_share
        left = max(0.0, self._started + phase * self.budget_s - time.monotonic())
        return left if requested is None else min(requested, left)


class DeadlineGrid(GridProxy):
    """``grid`` with every send's timeout cut to the round's deadline (`RoundClock`)."""

    def __init__(self, grid: Grid, clock: RoundClock) -> None:
        super().__init__(grid)
        self.clock = clock

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        return self.grid.send_and_receive(
            messages, timeout=self.clock.timeout_for(messages, timeout)
        )
