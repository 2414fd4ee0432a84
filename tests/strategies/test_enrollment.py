"""Enrollment: the directory and the key registry are filled from the nodes' own answers."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict

from fedhar.transport.keys import DeviceIdentity
from fedhar.wire import NODE_KEY, NODE_KEYS_KEY, NodeInfo, node_info_record
from strategies.enrollment import enroll
from strategies.run_info import RunInfo
from tests.helpers.replies import make_reply


class AnsweringGrid:
    """A grid whose nodes answer enrollment with the given contents (None: an error reply)."""

    def __init__(self, answers: dict[int, RecordDict | None]) -> None:
        self.answers = answers

    def get_node_ids(self) -> list[int]:
        return list(self.answers)

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            answer = self.answers[node]
            replies.append(
                make_reply(node_id=node, error_reason="crashed")
                if answer is None
                else make_reply(answer, node_id=node)
            )
        return replies


def _answer(node: int, partition: int, seed: int = 0) -> RecordDict:
    info = NodeInfo(node, partition, f"u{partition}", "watch", 0.75)
    return node_info_record(info, DeviceIdentity.from_seed(seed, partition).public_keys())


def _with_keys(content: RecordDict, signing: bytes) -> RecordDict:
    keys = content[NODE_KEYS_KEY]
    return RecordDict(
        {NODE_KEY: content[NODE_KEY], NODE_KEYS_KEY: ConfigRecord({**keys, "signing": signing})}
    )


def test_every_honest_node_is_enrolled_with_its_own_keys() -> None:
    run = RunInfo("r", 0, Path("."))
    enroll(AnsweringGrid({11: _answer(11, 0), 12: _answer(12, 1)}), run, timeout_s=1.0)
    assert sorted(run.directory.nodes) == [11, 12]
    assert run.directory[12].max_width == 0.75 and run.directory[12].user == "u1"
    identity = DeviceIdentity.from_seed(0, 1)
    assert run.keys.signing_key(12) == identity.signing_public_bytes()
    assert run.keys.exchange_key(12) == identity.public_bytes()


def test_malformed_impostor_and_crashed_nodes_are_left_out() -> None:
    run = RunInfo("r", 0, Path("."))
    small_order = bytes(32)  # an Ed25519 point that would accept forged signatures
    answers = {
        11: _answer(11, 0),
        12: _with_keys(_answer(12, 1), small_order),
        13: _answer(99, 2),  # answers as another node
        14: None,
        15: RecordDict({NODE_KEY: _answer(15, 4)[NODE_KEY]}),  # no keys at all
        16: _answer(16, 0),  # claims node 11's partition
    }
    enroll(AnsweringGrid(answers), run, timeout_s=1.0)
    assert sorted(run.directory.nodes) == [11]
    assert len(run.keys) == 1 and run.keys.signing_key(12) is None


def test_a_node_cannot_swap_its_keys_by_enrolling_again() -> None:
    run = RunInfo("r", 0, Path("."))
    enroll(AnsweringGrid({11: _answer(11, 0)}), run, timeout_s=1.0)
    original = run.keys.signing_key(11)
    enroll(AnsweringGrid({11: _answer(11, 0, seed=999)}), run, timeout_s=1.0)
    assert run.keys.signing_key(11) == original
