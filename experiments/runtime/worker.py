"""A Ray actor that keeps one ClientApp alive and runs batches of messages through it."""

from __future__ import annotations

import os
from collections.abc import Sequence

import ray
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp.typing import Mod

from clients.app import ClientSettings, make_client_app

CLIENT_ERROR = 1  # Error.code of a reply whose handler raised
# ``handle`` trains in one thread; ``finished`` and ``release`` answer from another, so the
# grid can move a busy worker's unstarted messages to an idle one, and take the replies a
# batch has so far when one of its clients hangs past the round timeout.
CONCURRENCY_GROUPS = {"compute": 1, "control": 1}
Work = tuple[Message, Context]
Result = tuple[Message, RecordDict]
Finished = tuple[str, int, list[Result]]  # (Ray node id, worker pid, replies with states)


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
        # the batch in progress: (id, messages not started yet, replies so far)
        self._batch: tuple[int, list[Work], list[Result]] = (-1, [], [])

    @ray.method(concurrency_group="compute")
    def handle(self, batch_id: int, batch: Sequence[Work]) -> Finished:
        """Each message's reply and its node's state after it; a raising handler becomes an
        error reply, as in Flower's simulation runtime. Messages `release` hands back before
        they start are skipped."""
        todo, results = list(batch), list[Result]()
        self._batch = (batch_id, todo, results)
        while True:
            try:
                message, context = todo.pop(0)  # atomic: `release` pops from the other end
            except IndexError:
                break
            try:
                reply = self.app(message, context)
            except Exception as error:  # a failing client never takes the batch down
                reason = f"{type(error).__name__}: {error}"
                reply = Message(Error(code=CLIENT_ERROR, reason=reason), reply_to=message)
            results.append((reply, context.state))
        return self.ray_node, os.getpid(), results

    @ray.method(concurrency_group="control")
    def finished(self, batch_id: int) -> Finished:
        """The replies of batch ``batch_id`` so far, while ``handle`` may still be busy."""
        current, _, results = self._batch
        return self.ray_node, os.getpid(), list(results) if current == batch_id else []

    @ray.method(concurrency_group="control")
    def release(self, batch_id: int) -> list[int]:
        """Hand back the later half of batch ``batch_id``'s messages that have not started,
        for an idle worker to take; returns their destination node ids."""
        current, todo, _ = self._batch
        released: list[int] = []
        if current != batch_id:
            return released
        for _ in range((len(todo) + 1) // 2):
            try:
                message, _ = todo.pop()
            except IndexError:
                break
            released.append(message.metadata.dst_node_id)
        return released
