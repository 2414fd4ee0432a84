"""Masked aggregation on state dicts, against plain FedAvg as the oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhar.partial.aggregate import aggregate_masked
from tests.helpers.oracles import weighted_average


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 5, generator=gen),
        "bn.running_mean": torch.randn(4, generator=gen).to(torch.float64),
        "bn.num_batches_tracked": torch.tensor(seed * 10, dtype=torch.long),
        "head.bias": torch.randn(2, generator=gen).half(),
    }


def _full_mask(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.ones(t.shape, dtype=torch.bool) for n, t in state.items()}


def test_full_model_clients_reproduce_fedavg_exactly() -> None:
    states = [_state(s) for s in (1, 2, 3)]
    weights = [10.0, 3.0, 7.0]
    contributions = [(s, _full_mask(s), w) for s, w in zip(states, weights, strict=True)]
    new_state, counts = aggregate_masked(_state(0), contributions)
    fedavg = weighted_average(states, weights)
    for name in fedavg:
        assert new_state[name].dtype == fedavg[name].dtype
        assert torch.equal(new_state[name], fedavg[name]), name
    assert counts == dict.fromkeys(fedavg, 3)


def test_fedavg_weights_by_examples_and_takes_max_of_counters() -> None:
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(5)}
    out = weighted_average([a, b], [1, 3])
    assert torch.equal(out["w"], torch.tensor([2.25, 1.0]))
    assert int(out["n"]) == 5


def test_each_element_averages_over_the_clients_that_trained_it() -> None:
    g = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    a = ({"w": torch.tensor([2.0, 4.0, 0.0, 0.0])}, {"w": torch.tensor([1, 1, 0, 0]).bool()}, 1)
    b = ({"w": torch.tensor([0.0, 8.0, 6.0, 0.0])}, {"w": torch.tensor([0, 1, 1, 0]).bool()}, 3)
    new_state, counts = aggregate_masked(g, [a, b])
    assert torch.equal(new_state["w"], torch.tensor([2.0, 7.0, 6.0, 1.0]))
    assert counts == {"w": 2}


_client = st.tuples(
    st.lists(st.floats(-10, 10), min_size=5, max_size=5),
    st.lists(st.booleans(), min_size=5, max_size=5),
    st.integers(0, 20),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_client, max_size=4), st.lists(st.floats(-10, 10), min_size=5, max_size=5))
def test_masked_average_matches_an_elementwise_reference(
    clients: list[tuple[list[float], list[bool], int]], global_values: list[float]
) -> None:
    g = {"w": torch.tensor(global_values, dtype=torch.float64)}
    contributions = [
        ({"w": torch.tensor(v, dtype=torch.float64)}, {"w": torch.tensor(m)}, w)
        for v, m, w in clients
    ]
    new_state, _ = aggregate_masked(g, contributions)
    for i, g_i in enumerate(global_values):
        covering = [(v[i], w) for v, m, w in clients if m[i] and w > 0]
        total = sum(w for _, w in covering)
        expected = sum(w * v for v, w in covering) / total if total else g_i
        assert new_state["w"][i].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_untrained_elements_and_entries_keep_their_global_value() -> None:
    g = _state(0)
    values = {n: t + 1 for n, t in _state(5).items() if n != "head.bias"}
    mask = {n: torch.zeros(t.shape, dtype=torch.bool) for n, t in values.items()}
    mask["conv.weight"][:2] = True
    new_state, counts = aggregate_masked(g, [(values, mask, 4.0)])
    assert torch.equal(new_state["conv.weight"][2:], g["conv.weight"][2:])
    assert torch.equal(new_state["conv.weight"][:2], values["conv.weight"][:2])
    for name in ("bn.running_mean", "bn.num_batches_tracked", "head.bias"):
        assert torch.equal(new_state[name], g[name]), name
    assert counts == {
        "conv.weight": 1,
        "bn.running_mean": 0,
        "bn.num_batches_tracked": 0,
        "head.bias": 0,
    }
    assert aggregate_masked(g, [])[1] == dict.fromkeys(g, 0)


def test_integer_buffers_take_the_max_of_covering_clients() -> None:
    g = {"n": torch.tensor([7, 7, 7])}
    a = ({"n": torch.tensor([2, 9, 1])}, {"n": torch.tensor([True, True, False])}, 1)
    b = ({"n": torch.tensor([4, 3, 100])}, {"n": torch.tensor([True, False, False])}, 1)
    new_state, _ = aggregate_masked(g, [a, b])
    assert torch.equal(new_state["n"], torch.tensor([4, 9, 7]))


def test_zero_weight_clients_do_not_move_the_state() -> None:
    g = {"w": torch.zeros(2)}
    c = ({"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.bool)}, 0)
    new_state, counts = aggregate_masked(g, [c])
    assert torch.equal(new_state["w"], g["w"])
    assert counts == {"w": 0}


def test_bad_input_is_rejected() -> None:
    g = {"w": torch.zeros(2)}
    ok = {"w": torch.ones(2, dtype=torch.bool)}
    with pytest.raises(ValueError, match="weights must be >= 0"):
        aggregate_masked(g, [({"w": torch.ones(2)}, ok, -1)])
    with pytest.raises(ValueError, match=r"not in the global state: \['v'\]"):
        aggregate_masked(g, [({"v": torch.ones(2)}, {"v": torch.ones(2)}, 1)])
    with pytest.raises(ValueError, match=r"w: shape \(3,\) != expected \(2,\)"):
        aggregate_masked(g, [({"w": torch.ones(3)}, {"w": torch.ones(3)}, 1)])
    with pytest.raises(ValueError, match="values and mask name different entries"):
        aggregate_masked(g, [({"w": torch.ones(2)}, {}, 1)])
