"""The secagg client mod: stages in order only, secrets never on disk, no update in clear."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from clients.secagg import secagg_mod
from clients.state_store import persisted_state_mod
from fedhar.transport.keystore import ClientKeys, RunKeys
from fedhar.transport.secagg import ProtocolError
from fedhar.wire import CONFIG_KEY, RUN_ID_KEY, SECAGG_KEY, SECAGG_STATE_KEY, record_from_bytes
from tests.helpers.identity import task_identity

KEYS = ClientKeys(RunKeys(Path("unused"), seed=0), server_fingerprint="")


def _context() -> Context:
    return Context(
        run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )


def _stage(stage: str, kind: str = MessageType.QUERY, **extra) -> Message:
    with task_identity(node_id=0):
        config = ConfigRecord({"stage": stage, RUN_ID_KEY: "run", "server-round": 1, **extra})
        return Message(RecordDict({SECAGG_KEY: config}), 7, kind)


def _never(msg: Message, context: Context) -> Message:
    raise AssertionError("the handler must not run")


def test_stages_out_of_order_are_refused() -> None:
    mod = secagg_mod(seed=0, keys=KEYS)
    with pytest.raises(ProtocolError, match="out-of-order"):
        mod(_stage("unmask", active=[7], dropped=[], threshold=0.67), _context(), _never)
    with pytest.raises(ProtocolError, match="unknown-stage"):
        mod(_stage("collect"), _context(), _never)


def test_advertise_keeps_fresh_keys_in_the_node_state_and_signs_them() -> None:
    mod, context = secagg_mod(seed=0, keys=KEYS), _context()
    with task_identity(node_id=7):
        reply = mod(_stage("advertise"), context, _never)
    answer = reply.content[SECAGG_KEY]
    assert answer["node-id"] == 7 and len(answer["signature"]) == 64
    assert SECAGG_STATE_KEY in context.state
    with task_identity(node_id=7):
        config = ConfigRecord({"stage": "advertise", RUN_ID_KEY: "run", "server-round": 2})
        with task_identity(node_id=0):
            second = Message(RecordDict({SECAGG_KEY: config}), 7, MessageType.QUERY)
        again = mod(second, context, _never)  # the same node, the next round
    assert again.content[SECAGG_KEY]["c-public"] != answer["c-public"]  # fresh keys per round
    assert again.content[SECAGG_KEY]["seed-commitment"] != answer["seed-commitment"]


def test_a_train_message_without_secagg_instructions_is_refused() -> None:
    with task_identity(node_id=0):
        msg = Message(
            RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1})}), 7, MessageType.TRAIN
        )
    with pytest.raises(ProtocolError, match="not-secure"):
        secagg_mod(seed=0, keys=KEYS)(msg, _context(), _never)


def test_the_round_secrets_are_never_written_to_disk(tmp_path: Path) -> None:
    context = _context()
    context.state[SECAGG_STATE_KEY] = ConfigRecord({"s-key": b"secret" * 5})
    context.state["personal-layers"] = ConfigRecord({"kept": 1})

    def train(msg: Message, ctx: Context) -> Message:
        with task_identity(node_id=7):
            return Message(RecordDict(), reply_to=msg)

    with task_identity(node_id=0):
        msg = Message(
            RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 2})}), 7, MessageType.TRAIN
        )
    persisted_state_mod(str(tmp_path))(msg, context, train)
    [saved] = list(tmp_path.rglob("round*.bin"))
    restored = record_from_bytes(saved.read_bytes())
    assert "personal-layers" in restored and SECAGG_STATE_KEY not in restored
