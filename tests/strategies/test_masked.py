"""Masked FedAvg: equals FedAvg on full models, keeps untrained elements, rejects mismatches."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedhar.models import build_model
from fedhar.models.microbi_convlstm import CONV1_CHANNELS, CONV2_CHANNELS
from fedhar.models.scaling import scale_width
from fedhar.partial.spec import extract, scatter, slice_width
from fedhar.wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, arrays_to_state, state_to_arrays
from strategies.heterofl import HeteroFL
from strategies.masked import MaskedFedAvg, infer_dims
from tests.helpers.fleet import MODEL, C, K, global_arrays, run_with
from tests.helpers.grids import FakeGrid
from tests.helpers.replies import trained_reply


def _config() -> ConfigRecord:
    return ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1})


def _grid_values(node: int):
    """A per-node update whose results are exact in float32 (quarters of small integers)."""
    gen = torch.Generator().manual_seed(node)

    def update(name: str, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t + 3
        return torch.randint(-8, 9, t.shape, generator=gen).to(t.dtype) / 4

    return update


def test_full_width_masked_aggregation_equals_flower_fedavg_exactly(reply) -> None:
    strategy = MaskedFedAvg(model=MODEL, min_train_nodes=3, min_available_nodes=3)
    arrays = global_arrays()
    messages = list(strategy.configure_train(1, arrays, _config(), FakeGrid([1, 2, 3])))
    assert [m.content[CONFIG_KEY]["width"] for m in messages] == [1.0, 1.0, 1.0]
    replies = [
        reply(
            trained_reply(m, _grid_values(m.metadata.dst_node_id), n),
            node_id=m.metadata.dst_node_id,
        )
        for m, n in zip(messages, (8, 8, 16), strict=True)
    ]
    ours, _ = strategy.aggregate_train(1, replies)
    flower, _ = FedAvg().aggregate_train(1, replies)
    assert ours is not None and flower is not None and list(ours) == list(flower)
    for name in ours:
        np.testing.assert_array_equal(
            ours[name].numpy(), flower[name].numpy().astype(ours[name].numpy().dtype)
        )
    assert strategy.round_stats()["partial/contributors/lstm"] == 3.0


def test_untrained_elements_keep_their_value_and_overlaps_average(reply) -> None:
    run = run_with({1: 1.0, 2: 0.5, 3: 0.3})
    strategy = HeteroFL(model=MODEL, run=run, min_train_nodes=3, min_available_nodes=3)
    arrays = global_arrays()
    start = arrays_to_state(arrays)
    messages = {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(1, arrays, _config(), FakeGrid([1, 2, 3]))
    }
    # node 1 trains only the head; nodes 2 (width 0.5) and 3 (width 0.25) train everything.
    replies = [
        reply(
            trained_reply(messages[1], lambda k, t: t + 100, 10, ["head.weight", "head.bias"]),
            node_id=1,
        ),
        reply(trained_reply(messages[2], lambda k, t: torch.full_like(t, 2.0), 10), node_id=2),
        reply(trained_reply(messages[3], lambda k, t: torch.full_like(t, 4.0), 30), node_id=3),
    ]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None
    state = arrays_to_state(new)
    conv = state["conv1.weight"]  # (16, C, 5): node 2 holds rows 0..7, node 3 rows 0..3
    assert torch.equal(conv[:4], torch.full_like(conv[:4], 3.5))  # (10*2 + 30*4) / 40
    assert torch.equal(conv[4:8], torch.full_like(conv[4:8], 2.0))
    assert torch.equal(conv[8:], start["conv1.weight"][8:])  # nobody trained these
    # head: columns 0..(2*ceil(22*w)) of both directions are shared by three nodes
    head = state["head.weight"]  # (K, 44); node 3 holds hidden units 0..5 of each direction
    expected = (10 * (start["head.weight"][:, 0] + 100) + 10 * 2 + 30 * 4) / 50
    torch.testing.assert_close(head[:, 0], expected)
    torch.testing.assert_close(head[:, 21], start["head.weight"][:, 21] + 100)
    stats = strategy.round_stats()
    assert stats["partial/contributors/head"] == 3.0 and stats["partial/contributors/conv1"] == 2.0


def test_mismatching_replies_are_rejected_with_a_reason_not_aggregated(reply) -> None:
    run = run_with({1: 1.0, 2: 0.5, 3: 0.5})
    strategy = HeteroFL(model=MODEL, run=run, min_train_nodes=3, min_available_nodes=3)
    arrays = global_arrays()
    start = arrays_to_state(arrays)
    messages = {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(1, arrays, _config(), FakeGrid([1, 2, 3]))
    }
    good = reply(trained_reply(messages[2], lambda k, t: t * 0 + 1, 10), node_id=2)
    wrong_shape = reply(trained_reply(messages[1], lambda k, t: t * 0 + 9, 10), node_id=3)
    extra = trained_reply(messages[1], lambda k, t: t * 0 + 9, 10)
    extra[ARRAYS_KEY]["stowaway"] = extra[ARRAYS_KEY]["head.bias"]
    stranger = reply(trained_reply(messages[2], lambda k, t: t * 0 + 9, 10), node_id=77)
    new, metrics = strategy.aggregate_train(
        1, [good, wrong_shape, reply(extra, node_id=1), stranger]
    )
    assert new is not None and metrics is not None
    state = arrays_to_state(new)
    assert torch.equal(state["conv1.weight"][:8], torch.ones(8, C, 5))
    assert torch.equal(state["conv1.weight"][8:], start["conv1.weight"][8:])
    stats = strategy.round_stats()
    assert stats["partial/rejected"] == 3.0 and stats["partial/accepted"] == 1.0
    assert stats["partial/rejected/shapes"] == 1.0
    assert stats["partial/rejected/names"] == 1.0
    assert stats["partial/rejected/unexpected-node"] == 1.0


def _without_arrays(content: RecordDict) -> RecordDict:
    return RecordDict({k: v for k, v in content.items() if k != ARRAYS_KEY})


def _with_num_examples(value: int | None):
    def edit(content: RecordDict) -> RecordDict:
        metrics = {k: v for k, v in content[METRICS_KEY].items() if k != "num-examples"}
        if value is not None:
            metrics["num-examples"] = value
        out = RecordDict(dict(content.items()))
        out[METRICS_KEY] = MetricRecord(metrics)
        return out

    return edit


@pytest.mark.parametrize(
    ("corrupt", "category", "reason"),
    [
        (_without_arrays, "no-arrays", "the reply has no 'arrays' ArrayRecord"),
        (_with_num_examples(None), "weight", "'num-examples' is missing or negative (None)"),
        (_with_num_examples(-5), "weight", "'num-examples' is missing or negative (-5)"),
    ],
)
def test_replies_without_arrays_or_a_valid_weight_are_rejected_and_change_nothing(
    reply, caplog, corrupt, category: str, reason: str
) -> None:
    run = run_with({1: 1.0, 2: 0.5})
    strategy = HeteroFL(model=MODEL, run=run, min_train_nodes=2, min_available_nodes=2)
    arrays = global_arrays()
    messages = {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(1, arrays, _config(), FakeGrid([1, 2]))
    }
    good = reply(trained_reply(messages[2], lambda k, t: t * 0 + 1, 10), node_id=2)
    bad = reply(corrupt(trained_reply(messages[1], lambda k, t: t * 0 + 9, 30)), node_id=1)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        new, _ = strategy.aggregate_train(1, [good, bad])
    assert new is not None
    full = build_model(MODEL, C, K)
    half = slice_width(full, build_model(MODEL, C, K, 0.5), 0.5)
    only_good, _ = scatter(
        arrays_to_state(good.content[ARRAYS_KEY]), half, arrays_to_state(arrays)
    )  # node 2's values on its half, the start elsewhere: as if node 1 never replied
    for name, value in arrays_to_state(new).items():
        assert torch.equal(value, only_good[name]), name
    stats = strategy.round_stats()
    assert stats["partial/rejected"] == 1.0 and stats[f"partial/rejected/{category}"] == 1.0
    assert stats["partial/contributors/conv1"] == 1.0
    assert f"partial rejected the reply of node 1 ({category}): {reason}" in caplog.text
    assert strategy.round_rejections() == [(1, f"partial rejected {category}: {reason}")]


def test_a_reply_that_trained_nothing_it_returned_changes_nothing(reply) -> None:
    strategy = MaskedFedAvg(model=MODEL, min_train_nodes=2, min_available_nodes=2)
    arrays = global_arrays()
    messages = list(strategy.configure_train(1, arrays, _config(), FakeGrid([1, 2])))
    node = messages[0].metadata.dst_node_id
    idle = trained_reply(messages[0], lambda k, t: t + 1, 10, trained=["observer.min_val"])
    new, metrics = strategy.aggregate_train(1, [reply(idle, node_id=node)])
    assert new is not None and metrics is not None
    assert strategy.round_stats()["partial/rejected"] == 0.0
    for name, value in arrays_to_state(new).items():
        assert torch.equal(value, arrays_to_state(arrays)[name])


def test_only_rejected_replies_leave_no_new_model(reply) -> None:
    strategy = MaskedFedAvg(model=MODEL, min_train_nodes=2, min_available_nodes=2)
    messages = list(strategy.configure_train(1, global_arrays(), _config(), FakeGrid([1, 2])))
    narrow = build_model(MODEL, C, K, 0.5).state_dict()
    content = trained_reply(messages[0], lambda k, t: narrow[k], 10)
    new, metrics = strategy.aggregate_train(
        1, [reply(content, node_id=messages[0].metadata.dst_node_id)]
    )
    assert new is None and metrics is None
    assert strategy.round_stats()["partial/rejected/shapes"] == 1.0


def test_heterofl_sends_each_node_the_leading_slice_its_device_allows() -> None:
    run = run_with({1: 1.0, 2: 0.6, 3: 0.25, 4: 0.1})
    strategy = HeteroFL(model=MODEL, run=run, min_train_nodes=4, min_available_nodes=4)
    arrays = global_arrays()
    full = build_model(MODEL, C, K)
    full.load_state_dict(arrays_to_state(arrays))
    for server_round in (1, 2):
        messages = list(
            strategy.configure_train(server_round, arrays, _config(), FakeGrid([1, 2, 3, 4]))
        )
        by_node = {m.metadata.dst_node_id: m for m in messages}
        assert sorted(by_node) == [1, 2, 3]  # node 4 cannot hold even width 0.25
        stats = strategy.round_stats()
        assert stats == {"partial/accepted": 0.0, "partial/rejected": 0.0, "partial/skipped": 1.0}
        for node, width in ((1, 1.0), (2, 0.5), (3, 0.25)):
            assert by_node[node].content[CONFIG_KEY]["width"] == width
            sub = build_model(MODEL, C, K, width)
            expected = extract(full.state_dict(), slice_width(full, sub, width))
            got = arrays_to_state(by_node[node].content[ARRAYS_KEY])
            sub.load_state_dict(got)  # strictly loadable at that width
            assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_infer_dims_names_the_fix_for_a_state_of_another_model() -> None:
    assert infer_dims(MODEL, arrays_to_state(global_arrays())) == (C, K)
    narrow = state_to_arrays(build_model(MODEL, C, K, 0.5).state_dict())
    try:
        infer_dims(MODEL, arrays_to_state(narrow))
    except ValueError as err:
        assert "model.width=1.0" in str(err)
    else:
        raise AssertionError("a half-width state passed as the global model")


def test_random_overlapping_updates_average_per_element_against_a_direct_loop(reply) -> None:
    """Each element is the example-weighted mean over the nodes whose leading slice holds it,
    computed here element by element from the nodes' own sub-models."""
    widths, counts = {1: 1.0, 2: 0.5, 3: 0.25}, {1: 7, 2: 13, 3: 29}
    strategy = HeteroFL(model=MODEL, run=run_with(widths), min_train_nodes=3,
                        min_available_nodes=3)  # fmt: skip
    arrays = global_arrays()
    start = arrays_to_state(arrays)
    messages = {
        m.metadata.dst_node_id: m
        for m in strategy.configure_train(1, arrays, _config(), FakeGrid([1, 2, 3]))
    }
    sent = {n: arrays_to_state(m.content[ARRAYS_KEY]) for n, m in messages.items()}
    updated = {
        n: {k: torch.randn(t.shape, generator=torch.Generator().manual_seed(n)) if
            t.is_floating_point() else t for k, t in state.items()}
        for n, state in sent.items()
    }  # fmt: skip
    replies = [
        reply(trained_reply(messages[n], lambda k, t, n=n: updated[n][k], counts[n]), node_id=n)
        for n in (1, 2, 3)
    ]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None
    state = arrays_to_state(new)
    for name, (rows, cols) in {
        "conv1.weight": (CONV1_CHANNELS, None),
        "conv2.weight": (CONV2_CHANNELS, CONV1_CHANNELS),
    }.items():
        full = start[name]
        for out in range(full.shape[0]):
            for inp in range(full.shape[1]):
                holders = [
                    n for n, w in widths.items()
                    if out < scale_width(rows, w) and (cols is None or inp < scale_width(cols, w))
                ]  # fmt: skip
                if not holders:
                    torch.testing.assert_close(state[name][out, inp], full[out, inp])
                    continue
                total = sum(counts[n] * updated[n][name][out, inp] for n in holders)
                expected = total / sum(counts[n] for n in holders)
                torch.testing.assert_close(state[name][out, inp], expected)
