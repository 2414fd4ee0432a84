"""Property test: randomly mutated sealed replies are never accepted and never crash the wrapper."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.helpers.identity import task_identity
from tests.helpers.replies import make_reply
from tests.strategies.test_encryption import (
    NODES,
    make_run,
    make_wrapper,
    sealed_content,
    with_envelope,
)

RUN_DIR = Path("unused-run-dir")  # the wrapper never writes to it


@pytest.fixture(scope="module")
def sealed() -> Iterator[dict[str, RecordDict]]:
    """Honest sealed replies: node 13's for rounds 1 and 2, and node 12's for round 1."""
    with task_identity(node_id=0):
        wrapper = make_wrapper(RUN_DIR, run=make_run(RUN_DIR))
        yield {
            "own": sealed_content(wrapper, 13, server_round=1),
            "later": sealed_content(wrapper, 13, server_round=2),
            "other": sealed_content(wrapper, 12, server_round=1),
        }


def mutate(blob: bytes, ops: list[tuple[str, int, bytes]], donor: bytes) -> bytes:
    """Apply (kind, position, bytes) edits in order; positions wrap around the blob."""
    data = bytearray(blob)
    for kind, position, chunk in ops:
        at = position % (len(data) + 1)
        if kind == "flip" and data:
            data[at % len(data)] ^= 1 << (position % 8)
        elif kind == "set" and data:
            data[at % len(data)] = chunk[0] if chunk else 0
        elif kind == "insert":
            data[at:at] = chunk
        elif kind == "delete":
            del data[at : at + max(1, len(chunk))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            data[at : at + len(chunk)] = donor[at : at + len(chunk)]
    return bytes(data)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]),
        st.integers(0, 2**20),
        st.binary(min_size=0, max_size=24),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=OPS,
    source=st.sampled_from(["own", "later", "other"]),
    sender=st.sampled_from([*sorted(NODES), 99]),
    forge_weight=st.booleans(),
    inner=st.sampled_from([None, "compressed", "metrics", ""]),
)
def test_mutated_replies_are_never_accepted(
    sealed: dict[str, RecordDict],
    ops: list,
    source: str,
    sender: int,
    forge_weight: bool,
    inner: str | None,
) -> None:
    content = sealed[source]
    original = content["sealed"]["envelope"]
    donor = sealed["other" if source != "other" else "own"]["sealed"]["envelope"]
    blob = mutate(original, ops, donor)
    honest_pair = (source, sender) in {("own", 13), ("other", 12)}
    assume(not (honest_pair and blob == original and not forge_weight and inner is None))
    mutated = with_envelope(content, blob)
    if forge_weight:
        records = dict(mutated.items())
        records["metrics"] = MetricRecord({**content["metrics"], "num-examples": 7})
        mutated = RecordDict(records)
    if inner is not None:
        records = dict(mutated.items())
        records["sealed"] = ConfigRecord({**mutated["sealed"], "inner": inner})
        mutated = RecordDict(records)
    wrapper = make_wrapper(RUN_DIR, run=make_run(RUN_DIR))
    wrapper.aggregate_train(1, [make_reply(mutated, node_id=sender)])  # must not raise
    stats = wrapper.round_stats()
    assert stats["encryption/accepted"] == 0 and stats["encryption/rejected"] == 1, stats
    assert wrapper.strategy.seen == []  # type: ignore[attr-defined]
