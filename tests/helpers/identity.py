"""The task identity that Flower stamps on every message a ServerApp or ClientApp creates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flwr.supercore.task_identity import TaskIdentity


@contextmanager
def task_identity(node_id: int = 0, run_id: int = 1, task_id: int = 1) -> Iterator[None]:
    """Act as task ``task_id`` of run ``run_id`` on node ``node_id`` (0: the server)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, node_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def act_as_node(node_id: int) -> None:
    """Switch the current task identity's node (a client replying inside a server test)."""
    TaskIdentity.node_id = node_id
