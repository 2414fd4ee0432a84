"""Enrollment: before round 1 the server asks every node who it is, once.

Each node answers a QUERY message with its user, device and the widest model it can train
(`fedhar.wire.NodeInfo`) and its device's public keys. The answers fill the run's
`FleetDirectory` (widths for partial models, devices for the fleet simulation) and its
`KeyRegistry` (keys for encrypted transport). A node whose answer is malformed, names another
node or a partition another node holds, or carries unusable keys is left out with a warning:
it is never sampled by strategies that read the directory, and its envelopes never verify.
"""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedhar.wire import CONFIG_KEY, node_info_from_record
from strategies.run_info import RunInfo


def _query() -> RecordDict:
    return RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 0})})


def enroll(grid: Grid, run: RunInfo, timeout_s: float) -> None:
    """Ask every registered node who it is; fill ``run.directory`` and ``run.keys``."""
    messages = [Message(_query(), node, MessageType.QUERY) for node in grid.get_node_ids()]
    partitions = {info.partition_id: n for n, info in run.directory.nodes.items()}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "node %d failed to enroll: %s", node_id, reply.error.reason)
            continue
        try:
            info, keys = node_info_from_record(reply.content)
            if info.node_id != node_id:
                raise ValueError(f"it answered as node {info.node_id}")
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
