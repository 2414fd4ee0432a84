"""Grids for tests: node sampling without a runtime, and whole rounds without Ray."""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity


class FakeGrid:
    """Just enough of a Grid for Flower's node sampling."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


class InProcessGrid:
    """Routes messages straight to a ClientApp in this process: whole rounds without Ray.

    A handler that raises becomes an error reply, as in Flower's simulation runtime.
    """

    def __init__(
        self,
        app: Any,
        num_nodes: int,
        first_node_id: int = 101,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as the runtime
        self.app = app
        self.contexts = {
            first_node_id + i: Context(
                run_id=1,
                node_id=first_node_id + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Any, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            try:
                replies.append(self.app(message, self.contexts[message.metadata.dst_node_id]))
            except Exception as error:  # the runtime turns a raising handler into an error reply
                replies.append(Message(Error(code=0, reason=repr(error)), reply_to=message))
        return replies
