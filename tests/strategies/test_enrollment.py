"""Enrollment: the directory and the key registry are filled from the nodes' own answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict

from fedhar.transport.keys import DeviceIdentity
from fedhar.transport.signed import enrollment_statement
from fedhar.wire import (
    NODE_KEY,
    NODE_KEYS_KEY,
    NodeInfo,
    node_claims,
    node_info_record,
    to_config_record,
)
from strategies.enrollment import enroll
from strategies.run_info import RunInfo
from tests.helpers.replies import make_reply

Answer = Callable[[ConfigRecord], RecordDict] | None  # query config -> answer; None: crash


class AnsweringGrid:
    """A grid whose nodes answer enrollment's query with the given functions."""

    def __init__(self, answers: dict[int, Answer]) -> None:
        self.answers = answers
        self.queries: dict[int, ConfigRecord] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.answers)

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            answer = self.answers[node]
            query = message.content["config"]
            self.queries[node] = query
            replies.append(
                make_reply(node_id=node, error_reason="crashed")
                if answer is None
                else make_reply(answer(query), node_id=node)
            )
        return replies


def _answer(
    node: int,
    partition: int,
    seed: int = 0,
    signer: DeviceIdentity | None = None,
    windows: object = None,
) -> Answer:
    """An answer of ``node`` (the device of ``partition`` under ``seed``) claiming ``windows``
    (default: 40 + partition), its proof signed by ``signer`` (default: the device itself)."""
    identity = DeviceIdentity.from_seed(seed, partition)

    def answer(query: ConfigRecord) -> RecordDict:
        count = 40 + partition if windows is None else windows
        info = NodeInfo(node, partition, f"u{partition}", "watch", 0.75, count)  # type: ignore[arg-type]
        keys = identity.public_keys()
        challenge = query["enroll-challenge"]
        claims = node_claims(to_config_record(info))
        statement = enrollment_statement(challenge, str(query["run-id"]), node, claims, keys)  # type: ignore[arg-type]
        return node_info_record(info, keys, (signer or identity).sign(statement))

    return answer


def _with_keys(answer: Answer, signing: bytes) -> Answer:
    def swapped(query: ConfigRecord) -> RecordDict:
        content = answer(query)  # type: ignore[misc]
        keys = content[NODE_KEYS_KEY]
        return RecordDict(
            {NODE_KEY: content[NODE_KEY], NODE_KEYS_KEY: ConfigRecord({**keys, "signing": signing})}
        )

    return swapped


def test_every_honest_node_is_enrolled_with_its_own_keys() -> None:
    run = RunInfo("r", 0, Path("."))
    enroll(AnsweringGrid({11: _answer(11, 0), 12: _answer(12, 1)}), run, timeout_s=1.0)
    assert sorted(run.directory.nodes) == [11, 12]
    assert run.directory[12].max_width == 0.75 and run.directory[12].user == "u1"
    assert run.directory[12].num_windows == 41
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
        15: lambda q: RecordDict({NODE_KEY: _answer(15, 4)(q)[NODE_KEY]}),  # no keys at all
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


def test_a_node_without_its_private_key_is_left_out() -> None:
    run = RunInfo("r", 0, Path("."))
    thief = DeviceIdentity.from_seed(0, 7)  # claims device 1's public keys, signs with its own
    enroll(AnsweringGrid({11: _answer(11, 0), 12: _answer(12, 1, signer=thief)}), run, 1.0)
    assert sorted(run.directory.nodes) == [11] and run.keys.signing_key(12) is None


def test_a_proof_for_another_challenge_is_left_out() -> None:
    first = AnsweringGrid({11: _answer(11, 0)})
    enroll(first, RunInfo("r", 0, Path(".")), 1.0)
    recorded = _answer(11, 0)(first.queries[11])  # a proof over the first enrollment's challenge
    run = RunInfo("r", 0, Path("."))
    second = AnsweringGrid({11: lambda _: recorded})
    enroll(second, run, 1.0)
    assert second.queries[11]["enroll-challenge"] != first.queries[11]["enroll-challenge"]
    assert len(run.directory) == 0


def test_every_node_gets_its_own_fresh_challenge_bound_to_the_run() -> None:
    grid = AnsweringGrid({11: _answer(11, 0), 12: _answer(12, 1)})
    run = RunInfo("run-7", 0, Path("."))
    enroll(grid, run, 1.0)
    challenges = {bytes(q["enroll-challenge"]) for q in grid.queries.values()}  # type: ignore[arg-type]
    assert len(challenges) == 2 and all(len(c) == 32 for c in challenges)
    assert {q["run-id"] for q in grid.queries.values()} == {run.transport_id}


def test_claims_changed_on_the_way_break_the_proof() -> None:
    def wider(query: ConfigRecord) -> RecordDict:
        content = _answer(12, 1)(query)  # type: ignore[misc]
        node = ConfigRecord({**content[NODE_KEY], "max-width": 1.0})  # was 0.75
        return RecordDict({NODE_KEY: node, NODE_KEYS_KEY: content[NODE_KEYS_KEY]})

    run = RunInfo("r", 0, Path("."))
    enroll(AnsweringGrid({11: _answer(11, 0), 12: wider}), run, 1.0)
    assert sorted(run.directory.nodes) == [11]


def test_a_malformed_partition_id_leaves_that_node_out_and_enrollment_goes_on() -> None:
    def bad(partition: object) -> Answer:
        def answer(query: ConfigRecord) -> RecordDict:
            content = _answer(12, 1)(query)  # type: ignore[misc]
            node = ConfigRecord({**content[NODE_KEY], "partition-id": partition})  # type: ignore[dict-item]
            return RecordDict({NODE_KEY: node, NODE_KEYS_KEY: content[NODE_KEYS_KEY]})

        return answer

    for partition in (-1, 1.5, "3", 2**70):
        run = RunInfo("r", 0, Path("."))
        enroll(AnsweringGrid({11: _answer(11, 0), 12: bad(partition)}), run, 1.0)
        assert sorted(run.directory.nodes) == [11], partition


def test_a_signed_claim_of_no_or_broken_window_counts_leaves_that_node_out() -> None:
    for windows in (0, -3, 1.5, True, "5"):
        run = RunInfo("r", 0, Path("."))
        enroll(AnsweringGrid({11: _answer(11, 0), 12: _answer(12, 1, windows=windows)}), run, 1.0)
        assert sorted(run.directory.nodes) == [11], windows
