"""A fake Grid and fleet for partial-model strategy tests (no Ray, no runtime)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedhar.models import build_model
from fedhar.wire import (
    ARRAYS_KEY,
    ClientIdentity,
    NodeInfo,
    TrainReport,
    arrays_to_state,
    state_to_arrays,
    train_reply,
)
from strategies.fleet import FleetDirectory, RunInfo

MODEL, C, K = "microbi_convlstm", 6, 7


@pytest.fixture(autouse=True)
def server_task() -> Iterator[None]:
    """Messages need the identity of the task creating them, as a ServerApp has."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class FakeGrid:
    """Just enough of a Grid for Flower's node sampling."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def run_with(max_widths: Mapping[int, float], seed: int = 0) -> RunInfo:
    nodes = {
        node: NodeInfo(node, i, f"u{node}", "mcu", width, b"")
        for i, (node, width) in enumerate(sorted(max_widths.items()))
    }
    return RunInfo("run", seed, Path("."), FleetDirectory(nodes))


def global_arrays(seed: int = 0):
    torch.manual_seed(seed)
    return state_to_arrays(build_model(MODEL, C, K).state_dict())


def trained_reply(
    msg: Message,
    update: Callable[[str, torch.Tensor], torch.Tensor],
    num_examples: int,
    trained: list[str] | None = None,
) -> RecordDict:
    """A reply to ``msg`` as a client would send it, with ``update`` applied to each entry."""
    state = {k: update(k, v) for k, v in arrays_to_state(msg.content[ARRAYS_KEY]).items()}
    report = TrainReport(num_examples, 1.0, 1, 0.1)
    identity = ClientIdentity(f"u{msg.metadata.dst_node_id}", "mcu")
    return train_reply(state, report, identity, list(state) if trained is None else trained)
