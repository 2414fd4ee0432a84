"""What the server's strategies and wrappers may know about the run they serve."""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedhar.transport.keys import KeyRegistry
from fedhar.transport.keystore import RunKeys
from fedhar.wire import NodeInfo


@dataclass
class FleetDirectory:
    """Enrolled nodes by Flower node id."""

    nodes: dict[int, NodeInfo] = field(default_factory=dict)
    _median: tuple[int, float] = field(default=(0, 0.0), init=False, repr=False)  # (size, median)

    def example_bound(self, node_id: int, ratio: float) -> float | None:
        """The most examples an update of ``node_id`` may stand for: the windows it enrolled
        with, and at most ``ratio`` times the fleet's median of those (so that no node enrolls
        its way to a larger weight); None for a node that did not enroll."""
        info = self.nodes.get(node_id)
        if info is None:
            return None
        if self._median[0] != len(self.nodes):  # enrollment only adds nodes
            counts = [node.num_windows for node in self.nodes.values()]
            self._median = (len(self.nodes), float(statistics.median(counts)))
        return min(float(info.num_windows), ratio * self._median[1])

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __getitem__(self, node_id: int) -> NodeInfo:
        return self.nodes[node_id]

    def __len__(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True)
class RunInfo:
    """The run: its id and seed, where it writes, its keys, and who enrolled with which keys.

    ``run_id`` is 128 random bits, kept in the checkpoint. Envelopes, signatures and secure
    aggregation are bound to ``transport_id``: the run id and 64 random bits drawn each time
    the run starts (fresh or resumed), so nothing sealed or signed in one run, or before an
    interruption (the interrupted round included), opens or verifies after it.
    ``key_store`` holds the server's private keys. ``directory`` and ``keys`` are filled
    once, by enrollment before round 1 (`strategies.enrollment.enroll`); the encryption
    wrapper reads device keys from ``keys`` only.
    """

    run_id: str
    seed: int
    run_dir: Path
    directory: FleetDirectory = field(default_factory=FleetDirectory)
    device_kinds: Mapping[str, str] = field(default_factory=dict)  # device name -> kind
    keys: KeyRegistry = field(default_factory=KeyRegistry)
    key_store: RunKeys | None = None  # None: the run cannot use encrypted transport
    start_id: str = field(default_factory=lambda: secrets.token_hex(8))  # this start of the run

    @property
    def transport_id(self) -> str:
        """What every envelope and signed statement of this start of the run is bound to."""
        return f"{self.run_id}.{self.start_id}"
