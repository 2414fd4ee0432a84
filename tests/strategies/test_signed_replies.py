"""Signed replies under encrypted transport: evaluation scores, declines and telemetry are
checked as they arrive, and a forged, unsigned or replayed one becomes that client's failure,
also when it was captured before an interruption."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from clients.encryption import encryption_mod
from fedhar.partial.static_bn import MomentSums
from fedhar.wire import ClientIdentity, EvalReport, bn_sums_reply, decline_reply, eval_reply
from strategies.encryption import BN_STATS_QUERY, EncryptedTransport
from strategies.grid_proxy import screening
from tests.helpers.replies import make_reply
from tests.strategies.test_encryption import (
    KEYS,
    FakeGrid,
    client_context,
    handler_for,
    make_run,
    signed_content,
    train_messages,
    unsigned,
)


def make_wrapper(tmp_path: Path) -> EncryptedTransport:
    inner = FedAvg(fraction_evaluate=1.0, min_available_nodes=1, min_evaluate_nodes=1)
    return EncryptedTransport(inner, make_run(tmp_path))


def evaluated(wrapper: EncryptedTransport, node: int, server_round: int = 1) -> RecordDict:
    """``node``'s signed evaluation reply for ``server_round``."""
    arrays = ArrayRecord({"w": torch.zeros(3)})
    messages = wrapper.configure_evaluate(server_round, arrays, ConfigRecord(), FakeGrid())
    message = next(m for m in messages if m.metadata.dst_node_id == node)

    def evaluate(msg: Message, context: Context) -> Message:
        report = EvalReport(num_examples=40, eval_loss=0.9, eval_accuracy=0.7, eval_macro_f1=0.6)
        return Message(eval_reply(report, ClientIdentity(f"u{node}", "watch")), reply_to=msg)

    return encryption_mod(KEYS)(message, client_context(node), evaluate).content


def screen(wrapper: EncryptedTransport, content: RecordDict, node: int, kind: str) -> Message:
    return wrapper.screen_reply(make_reply(content, node_id=node, message_type=kind))


def forged(content: RecordDict, key: str, **changes: object) -> RecordDict:
    records = dict(content.items())
    records[key] = type(content[key])({**content[key], **changes})  # type: ignore[arg-type]
    return RecordDict(records)


def test_a_signed_evaluation_passes_with_its_scores_and_without_its_signature(
    tmp_path: Path,
) -> None:
    wrapper = make_wrapper(tmp_path)
    reply = screen(wrapper, evaluated(wrapper, 11), 11, MessageType.EVALUATE)
    assert not reply.has_error()
    assert "signature" not in reply.content
    assert reply.content["metrics"]["eval-macro-f1"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda c: forged(c, "metrics", **{"eval-macro-f1": 0.99}), "bad-signature"),
        (lambda c: forged(c, "client", user="u12"), "bad-signature"),
        (unsigned, "unsigned"),
    ],
    ids=["score", "user", "unsigned"],
)
def test_a_forged_or_unsigned_evaluation_becomes_a_failure(
    tmp_path: Path,
    tamper,
    code: str,  # type: ignore[no-untyped-def]
) -> None:
    wrapper = make_wrapper(tmp_path)
    reply = screen(wrapper, tamper(evaluated(wrapper, 11)), 11, MessageType.EVALUATE)
    assert reply.has_error() and reply.error.reason.startswith(f"encryption rejected {code}")
    assert wrapper.round_stats()[f"encryption/screened/{code}"] == 1


def test_an_evaluation_signed_by_another_node_or_for_another_round_is_refused(
    tmp_path: Path,
) -> None:
    wrapper = make_wrapper(tmp_path)
    stolen = evaluated(wrapper, 12)
    assert screen(wrapper, stolen, 11, MessageType.EVALUATE).has_error()
    old = evaluated(wrapper, 11, server_round=1)
    wrapper.configure_evaluate(2, ArrayRecord(), ConfigRecord(), FakeGrid())
    assert screen(wrapper, old, 11, MessageType.EVALUATE).has_error()


def test_a_replayed_evaluation_is_refused(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    content = evaluated(wrapper, 11)
    assert not screen(wrapper, content, 11, MessageType.EVALUATE).has_error()
    again = screen(wrapper, content, 11, MessageType.EVALUATE)
    assert again.has_error() and "replay" in again.error.reason


def test_a_forged_decline_is_refused(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    message = train_messages(wrapper)[13]
    decline = decline_reply("no-plan: sram", ClientIdentity("u13", "watch"))
    signed = encryption_mod(KEYS)(message, client_context(13), lambda m, c: Message(
        decline, reply_to=m)).content  # fmt: skip
    assert not screen(wrapper, signed, 13, MessageType.TRAIN).has_error()
    wrapper.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid())
    fake = forged(signed, "decline", reason="no-plan: forged")
    assert screen(wrapper, fake, 13, MessageType.TRAIN).has_error()
    out_of_nowhere = RecordDict(dict(decline.items()))  # a decline nobody signed
    assert "unsigned" in screen(wrapper, out_of_nowhere, 13, MessageType.TRAIN).error.reason


def test_forged_telemetry_next_to_a_sealed_update_is_refused(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    signed = signed_content(wrapper, 11)
    assert signed["transport"]["seal-seconds"] < 10
    fake = forged(signed, "transport", **{"seal-seconds": 1e9})
    reply = screen(wrapper, fake, 11, MessageType.TRAIN)
    assert reply.has_error() and "bad-signature" in reply.error.reason


def test_errors_and_queries_pass_the_screen_unchanged(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    error = make_reply(error_reason="crash", node_id=11)
    assert wrapper.screen_reply(error) is error
    query = make_reply(RecordDict({"node": ConfigRecord({"x": 1})}), message_type=MessageType.QUERY)
    assert wrapper.screen_reply(query) is query


class ReplyingGrid(FakeGrid):
    def __init__(self, replies: list[Message]) -> None:
        self.replies = replies

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        return self.replies

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        return self.replies


def test_the_run_grid_screens_every_reply_before_the_stack_sees_it(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    honest = make_reply(evaluated(wrapper, 11), node_id=11, message_type=MessageType.EVALUATE)
    fake_scores = forged(evaluated(wrapper, 12), "metrics", **{"eval-macro-f1": 0.99})
    fake = make_reply(fake_scores, node_id=12, message_type=MessageType.EVALUATE)
    grid = screening(ReplyingGrid([honest, fake]), wrapper)  # type: ignore[arg-type]
    for receive in (lambda: grid.send_and_receive([]), lambda: grid.pull_messages([])):
        first, second = receive()
        assert not first.has_error() and second.has_error()
        wrapper.guard = type(wrapper.guard)()  # the second pass would otherwise be a replay
    plain = FakeGrid()
    assert screening(plain, FedAvg()) is plain  # type: ignore[arg-type]  # nothing to screen


def test_a_reply_captured_before_an_interruption_is_refused_after_it(tmp_path: Path) -> None:
    first = make_wrapper(tmp_path)
    content = signed_content(first, 11)  # round 1 of the first start, then the run is killed
    assert not first.screen_reply(make_reply(content, node_id=11)).has_error()

    resumed_run = dataclasses.replace(first.run, start_id="0123456789abcdef")  # same run id
    resumed = EncryptedTransport(first.strategy, resumed_run)  # rerunning round 1
    resumed.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid())
    replayed = resumed.screen_reply(make_reply(content, node_id=11))
    assert replayed.has_error() and "bad-signature" in replayed.error.reason
    past_screen = make_reply(unsigned(content), node_id=11)
    resumed._passed.add(id(past_screen))  # as if the screen had let it through
    resumed.aggregate_train(1, [past_screen])
    assert resumed.round_stats()["encryption/rejected/context-mismatch"] == 1

    fresh = signed_content(resumed, 11)  # the same node answering the rerun round
    assert not resumed.screen_reply(make_reply(fresh, node_id=11)).has_error()


def test_every_start_of_a_run_gets_its_own_transport_id(tmp_path: Path) -> None:
    first, second = make_run(tmp_path), make_run(tmp_path)
    assert first.run_id == second.run_id and first.transport_id != second.transport_id
    assert first.transport_id.startswith(first.run_id + ".")
    assert (
        train_messages(make_wrapper(tmp_path), 1)[11].content["config"]["run-id"]
        != (train_messages(make_wrapper(tmp_path), 1)[11].content["config"]["run-id"])
    )


def test_train_metrics_record_is_untouched_by_screening(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    signed = signed_content(wrapper, 12)
    reply = screen(wrapper, signed, 12, MessageType.TRAIN)
    assert isinstance(reply.content["metrics"], MetricRecord)
    assert reply.content["metrics"] == signed["metrics"]


def test_a_stack_started_without_the_screening_grid_still_fails_closed(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    honest = make_reply(evaluated(wrapper, 11), node_id=11, message_type=MessageType.EVALUATE)
    fake_scores = forged(evaluated(wrapper, 12), "metrics", **{"eval-macro-f1": 0.99})
    fake = make_reply(fake_scores, node_id=12, message_type=MessageType.EVALUATE)
    unsigned_eval = make_reply(
        unsigned(evaluated(wrapper, 13)), node_id=13, message_type=MessageType.EVALUATE
    )
    metrics = wrapper.aggregate_evaluate(1, [honest, fake, unsigned_eval])
    assert metrics is not None and metrics["eval-macro-f1"] == pytest.approx(0.6)
    assert sorted(node for node, _ in wrapper.round_rejections()) == [12, 13]

    wrapper.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid())
    decline = decline_reply("no-plan: forged", ClientIdentity("u13", "watch"))
    wrapper.aggregate_train(1, [make_reply(decline, node_id=13)])
    assert wrapper.round_stats()["encryption/rejected/unsigned"] == 1


def test_screened_replies_are_not_checked_twice(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    screened = screen(wrapper, evaluated(wrapper, 11), 11, MessageType.EVALUATE)
    metrics = wrapper.aggregate_evaluate(1, [screened])  # its signature is gone: no replay
    assert metrics is not None and not wrapper.round_rejections()


def _bn_answer(msg: Message, context: Context) -> Message:
    sums = {1.0: {"bn": MomentSums(10.0, torch.ones(4, dtype=torch.float64),
                                   torch.ones(4, dtype=torch.float64))}}  # fmt: skip
    return Message(bn_sums_reply(sums), reply_to=msg)


def test_batchnorm_sums_are_signed_for_the_round_the_node_trained_in(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    context = client_context(11)
    message = train_messages(wrapper)[11]
    encryption_mod(KEYS)(message, context, handler_for(11))  # trains: the mod notes the round
    query = Message(RecordDict(), 11, BN_STATS_QUERY)
    answer = encryption_mod(KEYS)(query, context, _bn_answer).content
    honest = screen(wrapper, answer, 11, BN_STATS_QUERY)
    assert not honest.has_error() and "signature" not in honest.content

    records = dict(answer.items())
    first = next(k for k in records if k != "signature")
    poisoned = ArrayRecord({k: torch.full((4,), 1e6, dtype=torch.float64)
                            for k in records[first]})  # type: ignore[union-attr]  # fmt: skip
    records[first] = poisoned
    forged_sums = screen(wrapper, RecordDict(records), 11, BN_STATS_QUERY)
    assert forged_sums.has_error() and "bad-signature" in forged_sums.error.reason
    unsigned_sums = screen(wrapper, unsigned(answer), 11, BN_STATS_QUERY)
    assert unsigned_sums.has_error() and "unsigned" in unsigned_sums.error.reason


def test_a_node_that_never_trained_sends_unsigned_sums_and_is_screened_out(
    tmp_path: Path,
) -> None:
    wrapper = make_wrapper(tmp_path)
    wrapper.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid())
    query = Message(RecordDict(), 12, BN_STATS_QUERY)
    answer = encryption_mod(KEYS)(query, client_context(12), _bn_answer).content
    assert screen(wrapper, answer, 12, BN_STATS_QUERY).has_error()
