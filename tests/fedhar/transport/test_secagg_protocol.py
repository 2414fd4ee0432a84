"""Secure aggregation's maths: exact sums through drop-outs, masks that hide, safe reveals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from fedhar.transport.masking import (
    CoordinateSpace,
    Layout,
    LayoutError,
    RingSpec,
    pack,
    prg,
    unpack,
)
from fedhar.transport.secagg import (
    ClientRound,
    ProtocolError,
    Revealed,
    RoundKeys,
    neighbour_graph,
    recover_sum,
    round_context,
    threshold_for,
)

SPACE = CoordinateSpace.of({"conv.weight": (8, 3, 5), "conv.bias": (8,), "head.weight": (6, 8)})
FULL = Layout(tuple((name, None) for name in SPACE.names))
HALF = Layout(
    (
        ("conv.weight", (tuple(range(4)), None, None)),
        ("conv.bias", (tuple(range(4)),)),
        ("head.weight", (None, tuple(range(4)))),
    )
)
ROLLED = Layout((("conv.weight", ((6, 7, 0, 1), None, None)), ("conv.bias", ((6, 7, 0, 1),))))
CONTEXT = round_context("run", 3)
FRACTION = 0.67


def _keys(clients: dict[int, ClientRound], graph, refused=None) -> RoundKeys:
    return RoundKeys(
        graph,
        {n: c.public_keys()[1] for n, c in clients.items()},
        {n: c.seed_commitment() for n, c in clients.items()},
        {n: (refused or {}).get(n, ()) for n in clients},
        FRACTION,
        CONTEXT,
    )


def protocol(
    layouts: dict[int, Layout],
    sending: set[int],
    revealing: set[int] | None = None,
    degree: int | None = None,
    seed: int = 0,
    lie: Callable[[int, int, bytes], bytes] | None = None,
):
    """Run one round among ``layouts``' nodes; ``sending`` send their input, ``revealing``
    answer the unmask stage (``lie`` may alter a revealed share). Returns (recovered sum or
    the error, the plain sum, masked)."""
    rng = np.random.default_rng(seed)
    nodes = sorted(layouts)
    clients = {n: ClientRound(n, CONTEXT) for n in nodes}
    roster = {n: c.public_keys() for n, c in clients.items()}
    graph = neighbour_graph(nodes, degree, seed)
    shared = {n: clients[n].share_keys(roster, graph[n], FRACTION) for n in nodes}
    positions = {n: layouts[n].flat(SPACE) for n in nodes}
    values = {n: rng.integers(-(2**20), 2**20, len(positions[n])) for n in nodes}
    for n in nodes:
        clients[n].receive_shares({o: b[n] for o, b in shared.items() if n in b})
    masked = {n: clients[n].mask(values[n], positions[n], positions, SPACE.size) for n in sending}
    b_shares, s_shares = {}, {}
    dropped = [n for n in nodes if n not in sending]
    for holder in sorted(sending if revealing is None else revealing):
        b_out, s_out = clients[holder].reveal(sorted(sending), dropped)
        for owner, share in b_out.items():
            b_shares.setdefault(owner, {})[holder] = lie(holder, owner, share) if lie else share
        for owner, share in s_out.items():
            s_shares.setdefault(owner, {})[holder] = share
    plain = np.zeros(SPACE.size, dtype=np.int64)
    for n in sending:
        plain[positions[n]] += values[n]
    try:
        total = recover_sum(masked, positions, _keys(clients, graph),
                            Revealed(b_shares, s_shares), dropped, SPACE.size)  # fmt: skip
    except ProtocolError as error:
        return error, plain, masked
    return RingSpec(16, 1.0, 2**16, 64).to_signed(total), plain, masked


@pytest.mark.parametrize("degree", [None, 4])
def test_the_unmasked_sum_is_the_plain_sum_exactly(degree: int | None) -> None:
    layouts = dict.fromkeys(range(1, 9), FULL)
    total, plain, _ = protocol(layouts, set(layouts), degree=degree)
    assert np.array_equal(total, plain)


@pytest.mark.parametrize(("degree", "dropped"), [(None, {3, 7}), (4, {3})])
def test_drop_outs_after_sharing_keys_are_recovered_exactly(degree: int | None, dropped) -> None:
    layouts = dict.fromkeys(range(1, 10), FULL)
    total, plain, _ = protocol(layouts, sending=set(layouts) - dropped, degree=degree)
    assert np.array_equal(total, plain)


def test_partial_models_sum_per_coordinate_over_the_nodes_that_hold_it() -> None:
    layouts = {1: FULL, 2: HALF, 3: ROLLED, 4: FULL, 5: HALF, 6: ROLLED, 7: FULL}
    total, plain, _ = protocol(layouts, sending={1, 2, 3, 5, 6, 7})  # a full-width node drops
    assert np.array_equal(total, plain)


def test_coordinates_nobody_holds_sum_to_zero() -> None:
    layouts = {1: HALF, 2: ROLLED, 3: HALF, 4: ROLLED}  # neither holds conv.weight rows 4-5
    total, plain, _ = protocol(layouts, sending={1, 2, 3, 4})
    held = np.union1d(HALF.flat(SPACE), ROLLED.flat(SPACE))
    untouched = np.setdiff1d(np.arange(SPACE.size), held)
    assert untouched.size > 0 and not total[untouched].any()
    assert np.array_equal(total, plain)


def test_a_lying_share_holder_is_outvoted_by_the_commitment() -> None:
    def lie(holder: int, owner: int, share: bytes) -> bytes:
        if holder != 2:
            return share
        return (int.from_bytes(share, "big") ^ 1).to_bytes(len(share), "big")

    layouts = dict.fromkeys(range(1, 8), FULL)
    total, plain, _ = protocol(layouts, sending=set(layouts), lie=lie)
    assert np.array_equal(total, plain)


def test_recovery_below_the_threshold_fails_cleanly() -> None:
    layouts = dict.fromkeys(range(1, 7), FULL)  # threshold ceil(0.67 * 6) = 5 shares
    error, _, _ = protocol(layouts, sending={1, 2, 3, 4, 5}, revealing={1, 2, 3, 4})
    assert isinstance(error, ProtocolError) and error.code == "below-threshold"


def test_a_masked_vector_is_uniform_in_the_ring() -> None:
    """One client's masked input, read by a server without the other shares: chi-square over
    256 bins of the top byte and a KS test on [0, 1) are both consistent with uniform."""
    ring_bits = 40
    layouts = dict.fromkeys(range(1, 5), FULL)
    nodes = sorted(layouts)
    clients = {n: ClientRound(n, CONTEXT) for n in nodes}
    roster = {n: c.public_keys() for n, c in clients.items()}
    graph = neighbour_graph(nodes, None, 0)
    shared = {n: clients[n].share_keys(roster, graph[n], FRACTION) for n in nodes}
    clients[1].receive_shares({o: b[1] for o, b in shared.items() if 1 in b})
    space = CoordinateSpace.of({"w": (20000,)})
    flat = Layout((("w", None),)).flat(space)
    constant = np.full(flat.size, 7, dtype=np.int64)  # the least random input there is
    masked = clients[1].mask(constant, flat, dict.fromkeys(nodes, flat), space.size)
    reduced = RingSpec(16, 1.0, 1, ring_bits).reduce(masked)
    top = (reduced >> np.uint64(ring_bits - 8)).astype(int)
    assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > 1e-4
    assert stats.kstest(reduced.astype(np.float64) / 2**ring_bits, "uniform").pvalue > 1e-4


def test_prg_seeds_are_full_256_bit_keys() -> None:
    a, b = bytes(32), bytes(31) + b"\x01"
    assert not np.array_equal(prg(a, 16), prg(b, 16))  # the last bit matters
    assert np.array_equal(prg(a, 16), prg(a, 32)[:16])
    with pytest.raises(ValueError, match="32 bytes"):
        prg(bytes(16), 4)


def _holders() -> tuple[dict[int, ClientRound], dict[int, dict[int, bytes]]]:
    nodes = [1, 2, 3, 4]
    clients = {n: ClientRound(n, CONTEXT) for n in nodes}
    roster = {n: c.public_keys() for n, c in clients.items()}
    graph = neighbour_graph(nodes, None, 0)
    shared = {n: clients[n].share_keys(roster, graph[n], FRACTION) for n in nodes}
    return clients, shared


def test_reveals_that_would_unmask_a_node_are_refused() -> None:
    clients, shared = _holders()
    client = clients[1]
    client.receive_shares({o: b[1] for o, b in shared.items() if 1 in b})
    with pytest.raises(ProtocolError, match="active-and-dropped"):
        client.reveal([1, 2, 3], [3])
    with pytest.raises(ProtocolError, match="self-dropped"):
        client.reveal([2, 3, 4], [1])
    with pytest.raises(ProtocolError, match="below-threshold"):
        client.reveal([1, 2], [3, 4])
    b_out, s_out = client.reveal([1, 2, 3], [4])
    assert sorted(b_out) == [1, 2, 3] and sorted(s_out) == [4]
    with pytest.raises(ProtocolError, match="already-revealed"):  # a second request: s of 3
        client.reveal([1, 2, 4], [3])


def test_malformed_or_misaddressed_shares_are_refused_and_never_masked_with() -> None:
    clients, shared = _holders()
    inbox = {o: b[1] for o, b in shared.items() if 1 in b}
    blob = bytearray(inbox[2])
    blob[-1] ^= 1
    inbox[2] = bytes(blob)
    inbox[3] = shared[3][4]  # 3's share for 4, forwarded to 1
    assert clients[1].receive_shares(inbox) == [2, 3]
    assert sorted(clients[1].shares) == [1, 4]  # masks pair only with 4
    with pytest.raises(ProtocolError, match="not-a-neighbour"):
        clients[1].receive_shares({9: inbox[4]})


def test_a_server_cannot_isolate_a_node_to_learn_its_seeds() -> None:
    client = ClientRound(1, CONTEXT)
    roster = {1: client.public_keys(), 2: ClientRound(2, CONTEXT).public_keys()}
    with pytest.raises(ProtocolError, match="too-few-neighbours"):
        client.share_keys(roster, [], FRACTION)
    with pytest.raises(ProtocolError, match="too-few-neighbours"):
        client.share_keys(roster, [2], FRACTION)  # one neighbour: fewer than the default 2
    with pytest.raises(ProtocolError, match="too-few-holders"):
        threshold_for(1, FRACTION)


def test_wrong_length_vectors_are_refused() -> None:
    clients, _ = _holders()
    flat = FULL.flat(SPACE)
    with pytest.raises(ProtocolError, match="wrong-length"):
        clients[1].mask(np.zeros(3, dtype=np.int64), flat, {1: flat}, SPACE.size)
    ring = RingSpec(16, 1.0, 1, 24)
    data = pack(ring.reduce(np.arange(10, dtype=np.uint64)), ring.ring_bits)
    assert np.array_equal(unpack(data, 10, 24), np.arange(10))
    with pytest.raises(LayoutError, match="need 33"):
        unpack(data, 11, 24)


def test_the_ring_is_sized_so_that_sums_never_wrap() -> None:
    ring = RingSpec.for_cohort(200, 16, 2.0, 4096)
    worst = 200 * ring.max_weight * ring.levels
    assert worst < 2 ** (ring.ring_bits - 1)
    rng = np.random.default_rng(0)
    levels, clipped = ring.quantize(np.array([5.0, -5.0, 0.5]), rng)
    assert clipped == 2 and levels[0] == ring.levels and levels[1] == -ring.levels
    summed = ring.reduce(np.full(200, -worst // 200, dtype=np.int64).view(np.uint64).sum())
    assert ring.to_signed(np.array([summed]))[0] == -(worst // 200) * 200
    with pytest.raises(ValueError, match="65-bit ring, over 64"):
        RingSpec.for_cohort(2**20, 32, 1.0, 2**11)


def test_stochastic_rounding_is_unbiased() -> None:
    ring = RingSpec.for_cohort(10, 4, 1.0, 1)
    levels, _ = ring.quantize(np.full(200000, 0.3), np.random.default_rng(1))
    assert abs(levels.mean() * ring.step - 0.3) < 3e-3


def test_neighbour_graphs_are_regular_and_symmetric() -> None:
    nodes = list(range(100, 150))
    graph = neighbour_graph(nodes, 6, seed=4)
    assert all(len(peers) == 6 and n not in peers for n, peers in graph.items())
    assert all(n in graph[p] for n, peers in graph.items() for p in peers)
    assert neighbour_graph(nodes, 6, seed=4) == graph
    assert neighbour_graph(nodes[:5], 6, seed=4)[100] == (101, 102, 103, 104)  # complete
    assert threshold_for(7, 0.67) == 5 and threshold_for(2, 0.67) == 2
    with pytest.raises(ValueError, match=r"\(0.5, 1\]"):
        threshold_for(5, 0.5)


def test_layouts_outside_the_space_are_refused() -> None:
    with pytest.raises(LayoutError, match="not a float entry"):
        Layout((("lstm.weight", None),)).check(SPACE)
    with pytest.raises(LayoutError, match="leave"):
        Layout((("conv.bias", ((8,),)),)).check(SPACE)
    with pytest.raises(LayoutError, match="order"):
        Layout((("head.weight", None), ("conv.bias", None))).check(SPACE)
    assert Layout.from_bytes(HALF.to_bytes(), SPACE) == HALF
