"""Tracking wrapper: failures, declines and per-user scores, without a Grid."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType
from flwr.serverapp.strategy import FedAvg

from fedhar.records import RoundRecord
from fedhar.wire import (
    ClientIdentity,
    EvalReport,
    NodeInfo,
    TrainReport,
    decline_reply,
    eval_reply,
    train_reply,
)
from strategies.compression import CompressedUpdates
from strategies.deadline import RoundClock
from strategies.run_info import FleetDirectory
from strategies.tracking import NO_REPLY, NoProgress, Tracking, summarize_error
from tests.helpers.grids import FakeGrid


class Collect:
    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def on_round(self, record: RoundRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.records.append(None)  # type: ignore[arg-type]


def _update(value: float, n: int, user: str):
    state = {"w": torch.full((3,), value)}
    report = TrainReport(num_examples=n, train_loss=1.0, num_steps=1, compute_seconds=0.1)
    return train_reply(state, report, ClientIdentity(user, "phone"), list(state))


def test_failures_and_declines_are_counted_and_kept_from_aggregation(reply) -> None:
    sink = Collect()
    tracking = Tracking(FedAvg(), sinks=[sink])
    replies = [
        reply(_update(1.0, 10, "u1"), node_id=1),
        reply(_update(3.0, 30, "u2"), node_id=2),
        reply(error_reason="Traceback ... RuntimeError: device crashed", node_id=3),
        reply(
            decline_reply("needs 300 KB SRAM, has 128 KB", ClientIdentity("u4", "mcu")), node_id=4
        ),
    ]
    arrays, _ = tracking.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, 2.5))  # (10*1 + 30*3) / 40
    tracking.aggregate_evaluate(1, [])
    record = sink.records[0]
    assert record.succeeded == 2
    assert [f.node_id for f in record.failures] == [3]
    assert "device crashed" in record.failures[0].reason
    assert record.declines == ("needs 300 KB SRAM, has 128 KB",)
    serialized = len(Array(np.zeros(3, dtype=np.float32)).data)  # npy bytes on the wire
    assert record.bytes_up == 2 * serialized


def _configure(tracking: Tracking, nodes: list[int]) -> None:
    arrays, config = ArrayRecord({"w": torch.zeros(3)}), ConfigRecord({"server-round": 1})
    list(tracking.configure_train(1, arrays, config, FakeGrid(nodes)))
    list(tracking.configure_evaluate(1, arrays, config, FakeGrid(nodes)))


def test_nodes_that_never_reply_are_failures_in_train_and_evaluate(reply) -> None:
    sink = Collect()
    tracking = Tracking(FedAvg(fraction_evaluate=1.0), sinks=[sink])
    _configure(tracking, [1, 2, 3])
    tracking.aggregate_train(1, [reply(_update(1.0, 10, "u1"), node_id=1)])
    scored = eval_reply(EvalReport(10, 0.1, 0.9, 0.8), ClientIdentity("u1", "phone"))
    tracking.aggregate_evaluate(1, [
        reply(scored, node_id=1, message_type=MessageType.EVALUATE),
        reply(error_reason="RuntimeError: sensor offline", node_id=2,
              message_type=MessageType.EVALUATE),
    ])  # fmt: skip
    record = sink.records[0]
    assert [(f.node_id, f.reason) for f in record.failures] == [(2, NO_REPLY), (3, NO_REPLY)]
    assert "round_timeout_s" in NO_REPLY
    assert [(f.node_id, f.reason) for f in record.evaluate_failures] == [
        (2, "RuntimeError: sensor offline"), (3, NO_REPLY)]  # fmt: skip
    assert record.to_json()["num_evaluate_failures"] == 2 and record.succeeded == 1


def test_an_update_a_wrapper_rejects_is_that_clients_failure(reply) -> None:
    sink = Collect()
    tracking = Tracking(CompressedUpdates(FedAvg(fraction_evaluate=1.0)), sinks=[sink])
    _configure(tracking, [1, 2])
    crash = reply(error_reason="RuntimeError: battery died", node_id=1)
    plain = reply(_update(1.0, 10, "u2"), node_id=2)  # not compressed: rejected
    arrays, _ = tracking.aggregate_train(1, [crash, plain])
    tracking.aggregate_evaluate(1, [])
    record = sink.records[0]
    assert arrays is None and record.succeeded == 0
    assert [f.node_id for f in record.failures] == [1, 2]
    assert record.failures[1].reason.startswith("compression rejected not-compressed: ")


def test_per_user_scores_and_server_evaluation_reach_the_record(reply) -> None:
    sink = Collect()
    tracking = Tracking(FedAvg(), server_evaluate=lambda r, a: {"macro_f1": 0.5}, sinks=[sink])
    tracking._round.arrays = ArrayRecord({"w": torch.zeros(1)})  # as configure_evaluate sets it
    replies = [
        reply(
            eval_reply(EvalReport(n, 0.1, acc, f1), ClientIdentity(user, "watch")),
            node_id=i,
            message_type=MessageType.EVALUATE,
        )
        for i, (user, n, acc, f1) in enumerate(
            [("a", 10, 0.9, 0.8), ("b", 30, 0.5, 0.4), ("c", 20, 0.7, 0.6)]
        )
    ]
    metrics = tracking.aggregate_evaluate(2, replies)
    record = sink.records[0]
    assert record.server == {"macro_f1": 0.5}
    assert [s.user for s in record.per_user] == ["a", "b", "c"]
    assert record.per_user_summary is not None
    assert record.per_user_summary.worst10_f1 == 0.4
    assert record.per_user_summary.median_f1 == 0.6
    assert metrics is not None
    assert abs(metrics["eval-macro-f1"] - (0.8 * 10 + 0.4 * 30 + 0.6 * 20) / 60) < 1e-9


def test_error_summary_keeps_the_last_line_of_a_wrapped_traceback() -> None:
    reason = (
        "ray::ClientAppActor.run() (pid=1)\n  File x.py, line 3\n"
        "Exception ClientAppException occurred. Message: simulated crash of node 0 (u00)\n"
    )
    assert summarize_error(reason) == "simulated crash of node 0 (u00)"
    assert summarize_error("") == "unknown error"


def _round(tracking: Tracking, server_round: int, replies) -> None:
    tracking.aggregate_train(server_round, replies)
    tracking.aggregate_evaluate(server_round, [])


def test_rounds_in_a_row_without_usable_updates_stop_the_run(reply) -> None:
    sink = Collect()
    tracking = Tracking(FedAvg(), sinks=[sink], max_failed_rounds=2)
    crash = "Traceback ... ValueError: expected np.ndarray (got numpy.float32)"
    _round(tracking, 1, [reply(error_reason=crash, node_id=1)])
    _round(tracking, 2, [reply(_update(1.0, 10, "u1"), node_id=1)])  # progress resets the count
    _round(tracking, 3, [reply(error_reason=crash, node_id=1), reply(error_reason=crash)])
    with pytest.raises(NoProgress) as stop:
        _round(tracking, 4, [reply(error_reason=crash, node_id=2)])
    message = str(stop.value)
    assert "rounds 3-4 had fewer than 1 usable update(s) each (0, 0)" in message
    assert f"3x {crash}" in message
    assert "runtime.max_failed_rounds" in message
    assert [r.server_round for r in sink.records] == [1, 2, 3, 4]  # the last round is kept


def test_a_round_below_the_strategy_minimum_counts_as_failed(reply) -> None:
    tracking = Tracking(FedAvg(), sinks=[Collect()], max_failed_rounds=1, min_updates=2)
    with pytest.raises(NoProgress, match=r"fewer than 2 usable update\(s\) each \(1\)"):
        _round(tracking, 1, [reply(_update(1.0, 10, "u1"), node_id=1)])


def test_without_a_limit_failed_rounds_go_on() -> None:
    tracking = Tracking(FedAvg(), sinks=[Collect()])
    for server_round in range(1, 6):
        _round(tracking, server_round, [])
    with pytest.raises(ValueError, match="max_failed_rounds"):
        Tracking(FedAvg(), max_failed_rounds=0)


def test_failures_name_the_partition_and_user_that_enrolled(reply) -> None:
    sink = Collect()
    directory = FleetDirectory({3: NodeInfo(3, 7, "u08", "esp32", 0.5, 100)})
    tracking = Tracking(FedAvg(), sinks=[sink], directory=directory)
    _round(tracking, 1, [reply(error_reason="boom", node_id=3), reply(error_reason="x", node_id=9)])
    named, stranger = sink.records[0].failures
    assert (named.node_id, named.partition_id, named.user) == (3, 7, "u08")
    assert (stranger.node_id, stranger.partition_id, stranger.user) == (9, None, None)


def test_configuring_a_rounds_training_starts_the_round_clock() -> None:
    clock = RoundClock(budget_s=100.0)
    tracking = Tracking(FedAvg(), clock=clock)
    assert clock.timeout_for([], 7.0) == 7.0  # no round yet: the requested timeout
    _configure(tracking, [1, 2])
    assert clock.timeout_for([], None) == pytest.approx(50.0, abs=1.0)  # train: half of it


def test_each_failure_is_one_warning_line_and_a_flood_is_counted(reply, caplog) -> None:
    directory = FleetDirectory({3: NodeInfo(3, 7, "u08", "esp32", 0.5, 100)})
    tracking = Tracking(FedAvg(), sinks=[Collect()], directory=directory)
    crashes = [reply(error_reason=f"Traceback ...\nRuntimeError: crash {n}", node_id=n)
               for n in range(3, 17)]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fedhar"):
        _round(tracking, 4, crashes)
    lines = [r.getMessage() for r in caplog.records if r.name == "fedhar"]
    assert lines[0] == "round 4: node 3 (partition 7, user u08) failed: RuntimeError: crash 3"
    assert len(lines) == 11 and lines[-1] == "round 4: 4 more failures in metrics.jsonl"
