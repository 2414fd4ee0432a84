"""Static BatchNorm in the masked strategies: statistics from a query, not from the updates."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.clientapp import ClientApp

from fedhar.models import build_model
from fedhar.partial.spec import extract, slice_width
from fedhar.partial.static_bn import batchnorm_sums, statistics_from_sums, width_sums
from fedhar.partial.widths import WIDTH_LEVELS
from fedhar.wire import (
    BN_STATS_ACTION,
    CONFIG_KEY,
    arrays_to_state,
    bn_stats_request_from_record,
    bn_sums_reply,
)
from strategies.heterofl import HeteroFL
from tests.helpers.fleet import MODEL, C, K, global_arrays, run_with
from tests.helpers.grids import InProcessGrid
from tests.helpers.replies import trained_reply

NODES, FIRST, BATCH, WINDOWS, T = 4, 101, 8, 16, 32
WIDTHS = {FIRST + i: w for i, w in enumerate((1.0, 0.5, 0.25, 0.5))}


def _windows(partition: int) -> np.ndarray:
    rng = np.random.default_rng(partition)
    return (rng.normal(size=(WINDOWS, C, T)) * (1 + partition) + partition).astype(np.float32)


def _update(name: str, t: torch.Tensor) -> torch.Tensor:
    if name.endswith(("running_mean", "running_var")):
        return torch.full_like(t, 1e3)  # what a client's own running statistics might say
    return t + 0.01 if t.is_floating_point() else t


def stand_in_app(failing: frozenset[int] = frozenset(), malformed: frozenset[int] = frozenset()):
    """Trains by a fixed step; answers the BatchNorm query from its partition's windows."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        return Message(trained_reply(msg, _update, WINDOWS), reply_to=msg)

    @app.query(BN_STATS_ACTION)
    def statistics(msg: Message, context) -> Message:
        partition = int(context.node_config["partition-id"])
        if partition in failing:
            raise RuntimeError("out of memory")
        state, widths, batch = bn_stats_request_from_record(msg.content)
        if partition in malformed:
            widths = widths[1:]
        return Message(
            bn_sums_reply(width_sums(MODEL, state, widths, _windows(partition), batch)),
            reply_to=msg,
        )

    return app


def _round(app: ClientApp, **options) -> tuple[HeteroFL, ArrayRecord | None]:
    strategy = HeteroFL(
        model=MODEL, run=run_with(WIDTHS), min_train_nodes=NODES, min_available_nodes=NODES,
        **options,
    )  # fmt: skip
    grid = InProcessGrid(app, NODES, first_node_id=FIRST)
    config = ConfigRecord({"epochs": 1, "batch-size": BATCH, "lr": 0.1})
    messages = list(strategy.configure_train(1, global_arrays(), config, grid))
    replies = grid.send_and_receive(messages)
    arrays, _ = strategy.aggregate_train(1, replies)
    return strategy, arrays


def _pooled_statistics(state: dict[str, torch.Tensor], width: float, partitions: list[int]):
    """Statistics of the width's sub-model over all the partitions' windows at once."""
    full = build_model(MODEL, C, K)
    full.load_state_dict(state)
    sub = build_model(MODEL, C, K, width)
    sub.load_state_dict(extract(state, slice_width(full, sub, width)))
    pooled = np.concatenate([_windows(p) for p in partitions])
    return statistics_from_sums(batchnorm_sums(sub, pooled, BATCH))  # batches stay aligned


def test_global_statistics_come_from_the_query_over_all_contributors() -> None:
    strategy, arrays = _round(stand_in_app(), static_bn=True)
    assert arrays is not None
    state = arrays_to_state(arrays)
    expected = _pooled_statistics(state, 1.0, list(range(NODES)))
    names = {f"{bn}.{kind}" for bn in ("bn1", "bn2") for kind in ("running_mean", "running_var")}
    assert set(expected) == names
    for name, tensor in expected.items():
        torch.testing.assert_close(state[name], tensor)  # the replies' 1e3 never shows
    assert sorted(strategy.width_statistics) == sorted({*WIDTH_LEVELS, 1.0})
    for width in (0.25, 0.5):
        for name, tensor in _pooled_statistics(state, width, list(range(NODES))).items():
            torch.testing.assert_close(strategy.width_statistics[width][name], tensor)
    stats = strategy.round_stats()
    assert stats["partial/bn-stats/answers"] == NODES
    assert stats["partial/rejected"] == 0


def test_without_static_batchnorm_the_replies_statistics_are_averaged() -> None:
    strategy, arrays = _round(stand_in_app())
    assert arrays is not None
    torch.testing.assert_close(arrays_to_state(arrays)["bn1.running_var"], torch.full((16,), 1e3))
    assert strategy.width_statistics == {}
    assert "partial/bn-stats/answers" not in strategy.round_stats()


def test_a_node_that_fails_or_garbles_the_query_is_left_out(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy, arrays = _round(
            stand_in_app(failing=frozenset({1}), malformed=frozenset({2})), static_bn=True
        )
    assert arrays is not None
    state = arrays_to_state(arrays)
    for name, tensor in _pooled_statistics(state, 1.0, [0, 3]).items():
        torch.testing.assert_close(state[name], tensor)
    stats = strategy.round_stats()
    assert stats["partial/bn-stats/answers"] == 2
    assert stats["partial/bn-stats/failed"] == 2
    assert "out of memory" in caplog.text and "asked for" in caplog.text


def test_with_no_answers_the_statistics_stay_as_they_were(caplog) -> None:
    before = arrays_to_state(global_arrays())
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy, arrays = _round(stand_in_app(failing=frozenset(range(NODES))), static_bn=True)
    assert arrays is not None
    state = arrays_to_state(arrays)
    for name in ("bn1.running_mean", "bn2.running_var"):
        torch.testing.assert_close(state[name], before[name], rtol=0, atol=0)
    assert strategy.round_stats()["partial/bn-stats/answers"] == 0
    assert "no node answered" in caplog.text


@pytest.mark.parametrize("scaler", [True, False])
def test_the_scaler_travels_in_the_train_config(scaler: bool) -> None:
    strategy = HeteroFL(
        model=MODEL, run=run_with(WIDTHS), min_train_nodes=NODES, min_available_nodes=NODES,
        scaler=scaler,
    )  # fmt: skip
    grid = InProcessGrid(stand_in_app(), NODES, first_node_id=FIRST)
    config = ConfigRecord({"epochs": 1, "batch-size": BATCH, "lr": 0.1})
    for message in strategy.configure_train(1, global_arrays(), config, grid):
        assert message.content[CONFIG_KEY].get("scaler", False) is scaler


def test_the_query_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stats_timeout_s"):
        HeteroFL(model=MODEL, static_bn=True, stats_timeout_s=0)
