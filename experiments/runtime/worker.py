"""A Ray actor that keeps one ClientApp alive and runs batches of messages through it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import ray
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp.typing import Mod
from flwr.common.constant import ErrorCode

from clients.app import ClientSettings, make_client_app

# ``handle`` trains in one thread; ``finished`` and ``release`` answer from another, so the
# grid can move a busy worker's unstarted messages to an idle one, and take the replies a
# batch has so far when one of its clients hangs past the round timeout.
CONCURRENCY_GROUPS = {"compute": 1, "control": 1}
Work = tuple[int, Message, Context]  # (position in the batch, message, its node's context)
Result = tuple[int, Message, RecordDict | None]  # (position, reply, state; None: unchanged)
Finished = tuple[str, list[Result], list[int]]  # (Ray node, results, released positions)


class ClientWorker:
    """Runs messages through a ClientApp built once, with the run's settings and mods.

    Parameters
    ----------
    settings : ClientSettings
        What every simulated node needs (federation, model, devices, faults).
    mods : Sequence[Mod]
        The client mods, outermost first.
    threads : int
        torch threads for this worker (its share of the node's cores).
    """

    def __init__(self, settings: ClientSettings, mods: Sequence[Mod], threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.app = make_client_app(lambda _: settings, list(mods))
        self.ray_node = ray.get_runtime_context().get_node_id()
        # the batch in progress: (id, not started yet, replies so far, handed back)
        self._batch: tuple[int, list[Work], list[Result], list[int]] = (-1, [], [], [])
        self._running_since: float | None = None  # when the message in progress began

    @ray.method(concurrency_group="compute")
    def handle(self, batch_id: int, batch: Sequence[Work]) -> Finished:
        """Each message's reply and its node's state after it, and the positions `release`
        handed back before they started (skipped here).

        A raising handler becomes an error reply, as in Flower's simulation runtime, and its
        node keeps the state it had before the message.
        """
        todo, results, released = list(batch), list[Result](), list[int]()
        self._batch = (batch_id, todo, results, released)
        while True:
            try:
                position, message, context = todo.pop(0)  # atomic; `release` pops the other end
            except IndexError:
                break
            self._running_since = time.monotonic()
            try:
                reply = self.app(message, context)
                state: RecordDict | None = context.state
            except Exception as error:  # a failing client never takes the batch down
                reason = f"{type(error).__name__}: {error}"
                code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                reply, state = Message(Error(code=code, reason=reason), reply_to=message), None
            results.append((position, reply, state))
            self._running_since = None
        self._batch = (-1, [], [], [])  # keep no replies around between calls
        return self.ray_node, results, released

    @ray.method(concurrency_group="control")
    def finished(self, batch_id: int) -> Finished:
        """The replies of batch ``batch_id`` so far, while ``handle`` may still be busy."""
        current, _, results, released = self._batch
        if current != batch_id:
            return self.ray_node, [], []
        return self.ray_node, list(results), list(released)

    @ray.method(concurrency_group="control")
    def running_s(self, batch_id: int) -> float | None:
        """How long batch ``batch_id``'s message in progress has been running; None when no
        message of it is running."""
        since = self._running_since
        if self._batch[0] != batch_id or since is None:
            return None
        return time.monotonic() - since

    @ray.method(concurrency_group="control")
    def release(self, batch_id: int) -> list[int] | None:
        """Hand back the later half of batch ``batch_id``'s messages that have not started,
        for an idle worker to take; returns their positions, or None while the batch is not
        in progress (not begun yet, or over)."""
        current, todo, _, released = self._batch
        given: list[int] = []
        if current != batch_id:
            return None
        for _ in range((len(todo) + 1) // 2):
            try:
                position, _, _ = todo.pop()
            except IndexError:
                break
            given.append(position)
            released.append(position)
        return given
