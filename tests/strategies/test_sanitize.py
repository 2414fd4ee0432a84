"""Update sanitation: forged or broken updates never reach the average, each with its reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedhar.wire import ARRAYS_KEY, METRICS_KEY, PERSONAL_NAMES_KEY, SECURE_SUM_KEY, NodeInfo
from strategies.run_info import FleetDirectory
from strategies.sanitize import SanitizedUpdates
from tests.helpers.grids import FakeGrid
from tests.helpers.replies import trained_reply

NODES = [1, 2, 3]


def _global() -> ArrayRecord:
    return ArrayRecord({"w": torch.zeros(4), "b": torch.zeros(2)})


def _configure(strategy: SanitizedUpdates, nodes=NODES) -> list[Message]:
    config = ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1})
    messages = strategy.configure_train(1, _global(), config, FakeGrid(nodes))
    return sorted(messages, key=lambda m: m.metadata.dst_node_id)


def _shift(value: float):
    return lambda name, t: t + value


def _replies(reply, messages, updates, counts=(10, 10, 10)):
    return [
        reply(trained_reply(m, update, n), node_id=m.metadata.dst_node_id)
        for m, update, n in zip(messages, updates, counts, strict=True)
    ]


def _enrolled(windows: dict[int, int]) -> FleetDirectory:
    return FleetDirectory({n: NodeInfo(n, n, f"u{n}", "watch", 1.0, w) for n, w in windows.items()})


def _strategy(directory: FleetDirectory | None = None, **options) -> SanitizedUpdates:
    algorithm = FedAvg(min_train_nodes=1, min_available_nodes=1)
    return SanitizedUpdates(algorithm, directory or FleetDirectory(), **options)


def _rejected(strategy: SanitizedUpdates) -> list[tuple[int, str]]:
    return [(node, reason.split(":")[0]) for node, reason in strategy.round_rejections()]


def test_a_non_finite_update_is_rejected_and_the_average_stays_finite(reply) -> None:
    strategy = _strategy()
    messages = _configure(strategy)
    nan = lambda name, t: torch.full_like(t, float("nan"))  # noqa: E731
    arrays, _ = strategy.aggregate_train(1, _replies(reply, messages, [_shift(1), _shift(3), nan]))
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 2.0))
    assert _rejected(strategy) == [(3, "sanitize rejected non-finite")]
    assert strategy.round_stats()["sanitize/rejected/non-finite"] == 1


def test_an_update_beyond_the_norm_bound_is_rejected(reply) -> None:
    strategy = _strategy(max_update_norm=10.0)
    messages = _configure(strategy)
    replies = _replies(reply, messages, [_shift(1), _shift(2), _shift(1e38)])
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 1.5))
    assert _rejected(strategy) == [(3, "sanitize rejected norm")]


def test_an_unenrolled_nodes_huge_example_count_is_cut_to_a_multiple_of_the_median(
    reply,
) -> None:
    strategy = _strategy(max_examples_ratio=10.0)
    messages = _configure(strategy)
    replies = _replies(reply, messages, [_shift(1), _shift(1), _shift(100)], (10, 10, 10**9))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    # the claim of 10^9 counts as 100 = 10 x median: (10 + 10 + 100 * 100) / 120
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 10020 / 120), rtol=1e-6)
    assert strategy.round_stats()["sanitize/capped"] == 1
    assert _rejected(strategy) == []


@pytest.mark.parametrize(
    ("fleet", "ratio", "counts", "mean", "capped"),
    [
        # 10^9 counts as the 30 windows node 3 enrolled with: (10 + 10 + 30 * 100) / 50
        ({1: 10, 2: 10, 3: 30}, 10.0, (10, 10, 10**9), 3020 / 50, 1),
        # within its 300 windows (10 x median 100): kept, where the round's median rule cut
        ({1: 10, 2: 10, 3: 300, 4: 100, 5: 100}, 10.0, (5, 5, 300), 30010 / 310, 0),
        # enrolled with 10^9 windows: at most 2 x the fleet's median 10
        ({1: 10, 2: 10, 3: 10**9, 4: 10, 5: 10}, 2.0, (10, 10, 10**9), 2020 / 40, 1),
    ],
)
def test_an_example_count_is_cut_to_its_nodes_enrolled_bound(
    reply, fleet: dict[int, int], ratio: float, counts: tuple, mean: float, capped: int
) -> None:
    strategy = _strategy(_enrolled(fleet), max_examples_ratio=ratio)
    messages = _configure(strategy)
    replies = _replies(reply, messages, [_shift(1), _shift(1), _shift(100)], counts)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, mean), rtol=1e-6)
    assert strategy.round_stats().get("sanitize/capped", 0) == capped


def _tampered(reply, message: Message, change) -> Message:
    content = trained_reply(message, _shift(1), 10)
    change(content)
    return reply(content, node_id=message.metadata.dst_node_id)


def _set_arrays(**arrays):
    def change(content) -> None:
        content.array_records[ARRAYS_KEY] = ArrayRecord(arrays)

    return change


def _set_examples(value):
    def change(content) -> None:
        record = MetricRecord(dict(content.metric_records[METRICS_KEY]))
        if value is None:
            del record["num-examples"]
        else:
            record["num-examples"] = value
        content.metric_records[METRICS_KEY] = record

    return change


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (_set_arrays(w=torch.zeros(5), b=torch.zeros(2)), "shapes"),
        (_set_arrays(w=torch.zeros(4, dtype=torch.complex64), b=torch.zeros(2)), "dtypes"),
        (_set_arrays(w=torch.zeros(4)), "names"),
        (_set_arrays(w=torch.zeros(4), b=torch.zeros(2), extra=torch.zeros(1)), "names"),
        (lambda content: content.array_records.pop(ARRAYS_KEY), "no-arrays"),
        (_set_examples(-5), "num-examples"),
        (_set_examples(None), "num-examples"),
        (_set_examples(float("inf")), "num-examples"),
    ],
)
def test_a_malformed_update_is_rejected_with_its_reason(reply, change, code: str) -> None:
    strategy = _strategy()
    messages = _configure(strategy)
    good = _replies(reply, messages[:2], [_shift(1), _shift(3)], (10, 10))
    arrays, _ = strategy.aggregate_train(1, [*good, _tampered(reply, messages[2], change)])
    assert arrays is not None  # no crash in the algorithm: the bad reply never reaches it
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 2.0))
    assert _rejected(strategy) == [(3, f"sanitize rejected {code}")]


def test_a_node_that_was_sent_nothing_is_rejected(reply) -> None:
    strategy = _strategy()
    messages = _configure(strategy, [1, 2])
    stranger = reply(trained_reply(messages[0], _shift(9), 10), node_id=7)
    arrays, _ = strategy.aggregate_train(1, [*_replies(reply, messages, [_shift(1)] * 2, (1, 1)),
                                             stranger])  # fmt: skip
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full(4, 1.0))
    assert _rejected(strategy) == [(7, "sanitize rejected unexpected-node")]


def test_personal_entries_the_node_keeps_are_not_expected_back(reply) -> None:
    class Personal(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            config = ConfigRecord(dict(config) | {PERSONAL_NAMES_KEY: ["b"]})
            return super().configure_train(server_round, arrays, config, grid)

    strategy = SanitizedUpdates(
        Personal(min_train_nodes=1, min_available_nodes=1), FleetDirectory()
    )
    messages = _configure(strategy)
    replies = [
        _tampered(reply, m, _set_arrays(w=torch.ones(4))) for m in messages
    ]  # every node keeps "b"
    strategy.aggregate_train(1, replies)
    assert _rejected(strategy) == []


def test_a_secure_sum_is_checked_for_finite_values_only(reply) -> None:
    strategy = _strategy()
    _configure(strategy)
    sums = []
    for value in (1.0, float("nan")):
        content = trained_reply(_configure(strategy)[0], _shift(value), 30)
        content.config_records[SECURE_SUM_KEY] = ConfigRecord({"senders": [1, 2, 3]})
        sums.append(reply(content, node_id=0))
    strategy.aggregate_train(1, sums[:1])
    assert _rejected(strategy) == []
    strategy.aggregate_train(1, sums[1:])
    assert _rejected(strategy) == [(0, "sanitize rejected non-finite")]


def test_error_replies_pass_through_to_the_algorithm(reply) -> None:
    strategy = _strategy()
    messages = _configure(strategy)
    replies = [*_replies(reply, messages[:2], [_shift(1)] * 2, (1, 1)),
               reply(error_reason="device crashed", node_id=3)]  # fmt: skip
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and _rejected(strategy) == []


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_update_norm"):
        _strategy(max_update_norm=0)
    with pytest.raises(ValueError, match="max_examples_ratio"):
        _strategy(max_examples_ratio=0.5)


def test_an_evaluation_count_above_the_enrolled_windows_is_cut_before_it_weights_scores(
    reply,
) -> None:
    strategy = _strategy(_enrolled({1: 10, 2: 10, 3: 30}))
    scores = {1: (10, 0.5), 2: (10, 0.5), 3: (10**9, 0.0)}  # node 3 claims to speak for 10^9
    replies = [
        reply(RecordDict({METRICS_KEY: MetricRecord({"num-examples": n, "eval-f1": f1})}),
              node_id=node, message_type=MessageType.EVALUATE)
        for node, (n, f1) in scores.items()
    ]  # fmt: skip
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics is not None
    assert metrics["eval-f1"] == pytest.approx((10 * 0.5 + 10 * 0.5) / 50)  # 3 counts 30
    assert strategy.round_stats()["sanitize/capped-evaluate"] == 1


@pytest.mark.parametrize("count", [-19, -20, float("nan"), float("inf")])
def test_an_evaluation_with_a_broken_count_is_left_out_of_the_federated_scores(
    reply, count: float
) -> None:
    strategy = _strategy(_enrolled({1: 10, 2: 10, 3: 30}))
    scores = {1: (10, 0.5), 2: (10, 0.5), 3: (count, 0.0)}
    replies = [
        reply(RecordDict({METRICS_KEY: MetricRecord({"num-examples": n, "eval-f1": f1})}),
              node_id=node, message_type=MessageType.EVALUATE)
        for node, (n, f1) in scores.items()
    ]  # fmt: skip
    metrics = strategy.aggregate_evaluate(1, replies)  # -20 would divide by zero
    assert metrics is not None and metrics["eval-f1"] == pytest.approx(0.5)
    assert strategy.round_stats()["sanitize/evaluate-dropped"] == 1
