"""FedPer, FedRep, FedBN with the personal-layers mod: local parts stay local, over rounds."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.personal import personal_layers
from fedhar.models import build_model
from fedhar.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    HEAD_EPOCHS_KEY,
    PERSONAL_NAMES_KEY,
    PERSONAL_STATE_KEY,
    arrays_nbytes,
    arrays_to_state,
    content_nbytes,
)
from strategies.personal import FedBN, FedPer, FedRep
from tests.helpers.fleet import MODEL, C, K, global_arrays, run_with
from tests.helpers.grids import FakeGrid
from tests.helpers.replies import trained_reply

HEAD = ("head.weight", "head.bias")


def _config() -> ConfigRecord:
    return ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1})


def _client(seen: list[dict[str, torch.Tensor]]):
    def handler(msg: Message, context: Context) -> Message:
        seen.append(arrays_to_state(msg.content[ARRAYS_KEY]))
        return Message(trained_reply(msg, lambda k, t: t + 1, 10), reply_to=msg)

    return handler


def test_fedper_heads_stay_on_nodes_across_rounds_and_are_never_sent() -> None:
    strategy = FedPer(model=MODEL, min_train_nodes=2, min_available_nodes=2)
    grid, arrays = FakeGrid([1, 2]), global_arrays()
    start = arrays_to_state(arrays)
    contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in (1, 2)}
    mod, seen = personal_layers(), []
    sizes = []
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, arrays, _config(), grid))
        sizes.append(sum(content_nbytes(m.content) for m in messages))
        for m in messages:
            assert list(m.content[CONFIG_KEY][PERSONAL_NAMES_KEY]) == list(HEAD)
            assert (HEAD[0] in m.content[ARRAYS_KEY]) == (server_round == 1)
        replies = [mod(m, contexts[m.metadata.dst_node_id], _client(seen)) for m in messages]
        assert all(set(HEAD).isdisjoint(r.content[ARRAYS_KEY]) for r in replies)
        new, _ = strategy.aggregate_train(server_round, replies)
        assert new is not None and strategy.round_stats()["partial/rejected"] == 0.0
        arrays = new
    # each node's head: global init + 1 after round 1, + 2 after round 2 (restored, not resent)
    assert torch.equal(seen[2]["head.weight"], start["head.weight"] + 1)
    for context in contexts.values():
        saved = arrays_to_state(context.state[PERSONAL_STATE_KEY])
        torch.testing.assert_close(saved["head.weight"], start["head.weight"] + 1 + 1)
    state = arrays_to_state(arrays)
    assert torch.equal(state["head.weight"], start["head.weight"])  # never aggregated
    torch.testing.assert_close(state["conv1.weight"], start["conv1.weight"] + 2)
    head_bytes = arrays_nbytes(ArrayRecord({k: global_arrays()[k] for k in HEAD}))
    assert sizes[0] - sizes[1] == 2 * head_bytes  # downlink carries no heads after round 1


def test_a_reply_that_carries_personal_entries_is_rejected_with_a_hint(reply) -> None:
    strategy = FedPer(model=MODEL, min_train_nodes=2, min_available_nodes=2)
    messages = list(strategy.configure_train(1, global_arrays(), _config(), FakeGrid([1, 2])))
    replies = [
        reply(trained_reply(m, lambda k, t: t, 5), node_id=m.metadata.dst_node_id) for m in messages
    ]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is None
    assert strategy.round_stats()["partial/rejected/names"] == 2.0


def test_evaluation_sends_personal_entries_only_to_nodes_without_them() -> None:
    strategy = FedPer(model=MODEL, min_train_nodes=2, min_available_nodes=2)
    grid, arrays = FakeGrid([1, 2]), global_arrays()
    messages = list(strategy.configure_train(1, arrays, _config(), grid))
    context, seen = Context(1, 1, {}, RecordDict(), {}), []
    trained = [personal_layers()(m, context, _client(seen)) for m in messages[:1]]
    new, _ = strategy.aggregate_train(1, trained)
    assert new is not None
    evaluate = {
        m.metadata.dst_node_id: m for m in strategy.configure_evaluate(1, new, ConfigRecord(), grid)
    }
    holder = trained[0].metadata.src_node_id
    other = next(n for n in evaluate if n != holder)
    assert HEAD[0] not in evaluate[holder].content[ARRAYS_KEY]
    assert HEAD[0] in evaluate[other].content[ARRAYS_KEY]
    assert evaluate[other].content[CONFIG_KEY]["width"] == 1.0


def test_fedbn_keeps_every_batchnorm_entry_local() -> None:
    strategy = FedBN(model=MODEL)
    names = strategy.personal_names(build_model(MODEL, C, K))
    assert set(names) == {
        f"{bn}.{key}"
        for bn in ("bn1", "bn2")
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }


def test_fedrep_asks_for_head_epochs_first() -> None:
    strategy = FedRep(head_epochs=3, model=MODEL, min_train_nodes=2, min_available_nodes=2)
    messages = list(strategy.configure_train(1, global_arrays(), _config(), FakeGrid([1, 2])))
    assert {m.content[CONFIG_KEY][HEAD_EPOCHS_KEY] for m in messages} == {3}
    assert strategy.personal_names(build_model(MODEL, C, K)) == HEAD


def test_personal_strategies_give_each_node_the_same_width_every_round() -> None:
    run = run_with({1: 1.0, 2: 0.6})
    strategy = FedBN(model=MODEL, run=run, min_train_nodes=2, min_available_nodes=2)
    grid, arrays = FakeGrid([1, 2]), global_arrays()
    for server_round in (1, 2, 3):
        train = {
            m.metadata.dst_node_id: m
            for m in strategy.configure_train(server_round, arrays, _config(), grid)
        }
        evaluate = {
            m.metadata.dst_node_id: m
            for m in strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
        }
        for messages in (train, evaluate):
            assert messages[1].content[CONFIG_KEY]["width"] == 1.0
            assert messages[2].content[CONFIG_KEY]["width"] == 0.5
