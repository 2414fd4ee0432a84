"""The node-state store: saved after training, restored on a fresh node for train and evaluate."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from clients.state_store import STATE_DIR, persisted_state_mod
from fedhar.wire import CONFIG_KEY
from tests.helpers.identity import task_identity


@pytest.fixture(autouse=True)
def server_task():
    with task_identity(node_id=0):
        yield


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 3}, state=RecordDict(),
                   run_config={})  # fmt: skip


def _message(kind: str, server_round: int) -> Message:
    content = RecordDict({CONFIG_KEY: ConfigRecord({"server-round": server_round})})
    return Message(content, 7, kind)


def _handler(seen: list[float | None]):
    """Records the state it finds; training writes the round into the state."""

    def handle(msg: Message, context: Context) -> Message:
        record = context.state.metric_records.get("memory")
        seen.append(None if record is None else float(record["round"]))
        if msg.metadata.message_type == MessageType.TRAIN:
            server_round = int(msg.content[CONFIG_KEY]["server-round"])
            context.state["memory"] = MetricRecord({"round": server_round})
        return Message(RecordDict(), reply_to=msg)

    return handle


def test_a_fresh_node_trains_from_the_state_before_and_evaluates_with_its_rounds(tmp_path):
    mod, seen = persisted_state_mod(str(tmp_path)), []
    node = _context()
    for server_round in (1, 2):
        mod(_message(MessageType.TRAIN, server_round), node, _handler(seen))
    assert sorted(p.name for p in (tmp_path / STATE_DIR / "node3").iterdir()) == [
        "round00001.bin", "round00002.bin"
    ]  # fmt: skip
    seen.clear()
    mod(_message(MessageType.EVALUATE, 2), _context(), _handler(seen))  # resumed, evaluated
    mod(_message(MessageType.TRAIN, 2), _context(), _handler(seen))  # resumed, redoes round 2
    mod(_message(MessageType.EVALUATE, 1), _context(), _handler(seen))
    assert seen == [2.0, 1.0, 1.0]


def test_evaluation_never_writes_state_and_queries_pass_through(tmp_path):
    mod, seen = persisted_state_mod(str(tmp_path)), []
    node = _context()
    node.state["memory"] = MetricRecord({"round": 5})
    mod(_message(MessageType.EVALUATE, 5), node, _handler(seen))
    mod(Message(RecordDict(), 7, MessageType.QUERY), _context(), _handler(seen))
    assert seen == [5.0, None]
    assert not (tmp_path / STATE_DIR).exists()
