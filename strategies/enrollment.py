"""Enrollment: before round 1 the server asks every node who it is, once.

Each node gets a fresh random challenge and answers with its user, device, the widest model
it can train and how many windows it holds (`fedhar.wire.NodeInfo`; the count bounds the
example count of its updates, `strategies.sanitize`), its device's public keys, and a
signature over the challenge and its claims (`fedhar.transport.signed.enrollment_statement`).
The answers fill the run's `FleetDirectory` (widths for partial models, devices for the
fleet simulation) and its `KeyRegistry` (keys for encrypted transport). A node whose answer
is malformed, names another node or a partition another node holds, claims no positive whole
number of windows, carries unusable keys, or a signature that does not verify under them (no
proof of possession) is left out with a warning: it is never sampled by strategies that read
the directory, and its envelopes never verify.
"""

from __future__ import annotations

import os
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedhar.transport.signed import CHALLENGE_BYTES, enrollment_statement, verify
from fedhar.wire import (
    CHALLENGE_KEY,
    CONFIG_KEY,
    NODE_KEY,
    RUN_ID_KEY,
    node_claims,
    node_info_from_record,
)
from strategies.run_info import RunInfo


def _query(run_id: str, challenge: bytes) -> RecordDict:
    config = ConfigRecord({"server-round": 0, RUN_ID_KEY: run_id, CHALLENGE_KEY: challenge})
    return RecordDict({CONFIG_KEY: config})


def _check_window_count(count: object) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"it claims {count!r} windows; a node holds a positive whole number")


def enroll(grid: Grid, run: RunInfo, timeout_s: float) -> None:
    """Ask every registered node who it is; fill ``run.directory`` and ``run.keys``."""
    challenges = {node: os.urandom(CHALLENGE_BYTES) for node in grid.get_node_ids()}
    messages = [
        Message(_query(run.transport_id, challenge), node, MessageType.QUERY)
        for node, challenge in challenges.items()
    ]
    partitions = {info.partition_id: n for n, info in run.directory.nodes.items()}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "node %d failed to enroll: %s", node_id, reply.error.reason)
            continue
        try:
            info, keys, proof = node_info_from_record(reply.content)
            if info.node_id != node_id:
                raise ValueError(f"it answered as node {info.node_id}")
            _check_window_count(info.num_windows)
            claims = node_claims(reply.content.config_records[NODE_KEY])
            statement = enrollment_statement(challenges[node_id], run.transport_id, node_id, claims,
                                             keys)  # fmt: skip
            try:
                verify(keys.signing, statement, proof)
            except ValueError as error:
                raise ValueError(f"no proof of possession of its signing key: {error}") from None
            if partitions.get(info.partition_id, node_id) != node_id:
                raise ValueError(f"partition {info.partition_id} already enrolled as node "
                                 f"{partitions[info.partition_id]}")  # fmt: skip
            run.keys.register(node_id, keys)
        except (KeyError, TypeError, ValueError) as error:
            log(WARNING, "node %d left out of the fleet: %s", node_id, error)
            continue
        run.directory.nodes[node_id] = info
        partitions[info.partition_id] = node_id
    log(INFO, "enrolled %d of %d nodes", len(run.directory), len(messages))
