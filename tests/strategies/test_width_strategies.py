"""Width policies as strategies: FjORD's per-round draws, FedRolex's rolling window, and
HeteroFL behind 32-bit compressed updates."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import Strategy

from clients.compression import compression_mod
from fedhar.models import build_model
from fedhar.partial.spec import extract, slice_width
from fedhar.partial.widths import WIDTH_LEVELS
from fedhar.wire import ARRAYS_KEY, CONFIG_KEY, arrays_to_state, state_to_arrays
from strategies.compression import CompressedUpdates
from strategies.fedrolex import FedRolex
from strategies.fjord import FjORD
from strategies.heterofl import HeteroFL
from tests.helpers.fleet import MODEL, C, K, global_arrays, run_with
from tests.helpers.grids import FakeGrid
from tests.helpers.identity import act_as_node
from tests.helpers.replies import make_reply, trained_reply

Update = Callable[[str, torch.Tensor], torch.Tensor]


def _config() -> ConfigRecord:
    return ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1})


def _sent(
    strategy: Strategy, server_round: int, arrays: ArrayRecord, nodes: list[int]
) -> dict[int, Message]:
    messages = strategy.configure_train(server_round, arrays, _config(), FakeGrid(nodes))
    return {m.metadata.dst_node_id: m for m in messages}


def test_fjord_draws_a_nested_width_per_round_within_each_device() -> None:
    max_widths = {1: 1.0, 2: 0.6, 3: 0.3, 4: 0.1}
    strategy = FjORD(model=MODEL, run=run_with(max_widths, seed=5), min_available_nodes=4)
    arrays = global_arrays()
    full = build_model(MODEL, C, K)
    full.load_state_dict(arrays_to_state(arrays))
    drawn: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for server_round in range(1, 13):
        by_node = _sent(strategy, server_round, arrays, sorted(max_widths))
        assert sorted(by_node) == [1, 2, 3]  # node 4 cannot hold even width 0.25
        for node, message in by_node.items():
            width = message.content[CONFIG_KEY]["width"]
            assert isinstance(width, float)
            assert width in WIDTH_LEVELS and width <= max_widths[node]
            sub = build_model(MODEL, C, K, width)
            got = arrays_to_state(message.content[ARRAYS_KEY])
            sub.load_state_dict(got)  # strictly loadable at that width
            leading = extract(full.state_dict(), slice_width(full, sub, width))  # offset 0
            assert all(torch.equal(got[k], leading[k]) for k in leading)
            drawn[node].append(width)
    assert set(drawn[1]) == set(WIDTH_LEVELS)
    assert set(drawn[2]) == {0.25, 0.5}
    assert set(drawn[3]) == {0.25}


def _numbered_rows(arrays: ArrayRecord) -> ArrayRecord:
    """The global model with every element of ``conv1.weight`` row i set to i."""
    state = arrays_to_state(arrays)
    rows = state["conv1.weight"].shape[0]  # (16, C, 5)
    state["conv1.weight"] = (
        torch.arange(rows, dtype=torch.float32).view(-1, 1, 1).expand(rows, C, 5).clone()
    )
    return state_to_arrays(state)


def test_fedrolex_sends_a_window_of_rows_that_rolls_with_the_round_and_wraps() -> None:
    run = run_with({1: 0.3, 2: 0.6})  # widths 0.25 and 0.5: 4 and 8 of conv1's 16 rows
    strategy = FedRolex(model=MODEL, run=run, min_available_nodes=2)
    arrays = _numbered_rows(global_arrays())
    for server_round in range(1, 21):
        by_node = _sent(strategy, server_round, arrays, [1, 2])
        for node, keep in ((1, 4), (2, 8)):
            conv = arrays_to_state(by_node[node].content[ARRAYS_KEY])["conv1.weight"]
            rows = conv[:, 0, 0].int().tolist()
            assert rows == [(server_round + i) % 16 for i in range(keep)]
            if server_round == 14:
                assert rows[:3] == [14, 15, 0]  # wrapped past the last unit


def _units_trained(now: torch.Tensor, start: torch.Tensor) -> list[torch.Tensor]:
    """Per dim of an entry, whether each index along it (a unit, a channel) got trained."""
    changed = now != start
    return [
        changed.movedim(d, 0).reshape(changed.shape[d], -1).any(1) for d in range(changed.dim())
    ]


def test_fedrolex_trains_every_unit_of_the_global_model_within_a_turn(reply) -> None:
    run = run_with({1: 0.3})  # width 0.25: windows of 4 of 16, 6 of 24 and 6 of 22 units
    strategy = FedRolex(model=MODEL, run=run, min_train_nodes=1, min_available_nodes=1)
    arrays = global_arrays()
    start = arrays_to_state(arrays)
    weights = [n for n, t in start.items() if t.is_floating_point() and t.dim()]

    def step(_: str, t: torch.Tensor) -> torch.Tensor:
        return t + 1 if t.is_floating_point() else t

    # conv2's 24 channels are the widest dim: windows of 6 starting at rounds 1..19 reach
    # channel 23 and wrap round to channel 0
    covering_round = 24 - 6 + 1
    for server_round in range(1, covering_round + 2):
        message = _sent(strategy, server_round, arrays, [1])[1]
        new, _ = strategy.aggregate_train(
            server_round, [reply(trained_reply(message, step, 10), node_id=1)]
        )
        assert new is not None
        arrays = new
        state = arrays_to_state(arrays)
        units = [u for n in weights for u in _units_trained(state[n], start[n])]
        assert all(bool(u.all()) for u in units) == (server_round >= covering_round)


def _through_mod(msg: Message, update: Update, num_examples: int) -> Message:
    """The node's reply as ``compression_mod(bits=32)`` sends it."""

    def handler(m: Message, _: Context) -> Message:
        return Message(trained_reply(m, update, num_examples), reply_to=m)

    node = msg.metadata.dst_node_id
    context = Context(1, node, {"partition-id": node}, RecordDict(), {})
    act_as_node(node)
    out = compression_mod(bits=32)(msg, context, handler)
    act_as_node(0)
    return make_reply(out.content, node_id=node)


def _scaled(factor: float) -> Update:
    """Floats times ``factor`` in [0.5, 2]; counters advance as on a real client."""
    return lambda _, t: t * factor if t.is_floating_point() else t + 3


def test_heterofl_behind_32_bit_compression_aggregates_exactly_like_plain_heterofl() -> None:
    run = run_with({1: 1.0, 2: 0.6, 3: 0.3})  # widths 1.0, 0.5, 0.25 overlap
    nodes, factors, examples = [1, 2, 3], (0.75, 1.25, 1.5), (10, 20, 30)
    plain = HeteroFL(model=MODEL, run=run, min_available_nodes=3)
    wrapped = CompressedUpdates(HeteroFL(model=MODEL, run=run, min_available_nodes=3), bits=32)
    arrays = global_arrays()
    start = arrays_to_state(arrays)
    to_plain, to_wrapped = _sent(plain, 1, arrays, nodes), _sent(wrapped, 1, arrays, nodes)
    plain_new, _ = plain.aggregate_train(
        1,
        [
            make_reply(trained_reply(to_plain[n], _scaled(f), e), node_id=n)
            for n, f, e in zip(nodes, factors, examples, strict=True)
        ],
    )
    wrapped_new, _ = wrapped.aggregate_train(
        1,
        [
            _through_mod(to_wrapped[n], _scaled(f), e)
            for n, f, e in zip(nodes, factors, examples, strict=True)
        ],
    )
    assert plain_new is not None and wrapped_new is not None
    ours, theirs = arrays_to_state(wrapped_new), arrays_to_state(plain_new)
    # Exact, not merely close: the mod sends delta = local - global rounded to float32, and
    # local = global * f with f in [0.5, 2] makes that difference exact (Sterbenz), so the
    # server's global + delta gives back every local value bit for bit. For any update the
    # two differ by at most that one rounding, which shows only when |local| << |global|.
    for name, value in theirs.items():
        if value.is_floating_point():
            assert torch.equal(ours[name], value), name
        else:  # counters are not sent compressed: the server keeps the value it sent
            assert torch.equal(ours[name], start[name]) and torch.equal(value, start[name] + 3)
    assert wrapped.round_stats()["compression/rejected"] == 0.0
    assert wrapped.strategy.round_stats() == plain.round_stats()
