"""A stand-in simulation worker for RayGrid tests (importable by Ray's worker processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ray
from flwr.app import ConfigRecord, Message, RecordDict

from experiments.runtime.worker import ClientWorker, Finished, Work


class EchoWorker(ClientWorker):
    """Replies to each message with its node id; dies on node 1's first message, sleeps on
    nodes 2 and 9 (hung clients), and counts calls in the node's state."""

    def __init__(self, marker: str) -> None:  # no ClientApp: the handling is below
        self.marker = marker
        self.ray_node = ray.get_runtime_context().get_node_id()
        self._batch = (-1, [], [], [])
        self._running_since = None

    @ray.method(concurrency_group="compute")
    def handle(self, batch_id: int, batch: Sequence[Work]) -> Finished:
        todo, results, released = list(batch), [], list[int]()
        self._batch = (batch_id, todo, results, released)
        while todo:
            position, message, context = todo.pop(0)
            self._running_since = time.monotonic()
            node = message.metadata.dst_node_id
            if node == 1 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)  # the worker process dies mid-batch
            if node in (2, 9):
                time.sleep(30)
            calls = int(context.state.config_records.get("calls", {"n": 0})["n"]) + 1
            context.state["calls"] = ConfigRecord({"n": calls})
            reply = Message(RecordDict({"echo": ConfigRecord({"node": node})}), reply_to=message)
            results.append((position, reply, context.state))
            self._running_since = None
        return self.ray_node, results, released
