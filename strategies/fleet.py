"""The simulated fleet on the server: enrollment, availability, device costs and stragglers.

Before round 1 every node is asked who it is (a QUERY message): its user, device, the widest
model it can train, and its device signing key, which must match the key the server
expects for that device. The resulting :class:`FleetDirectory` is what other wrappers use to
look up a node (widths for partial models, keys for encrypted transport).

With a device catalogue, the wrapper also simulates the devices' round: nodes that are not
available this round are not asked to train (drop-outs), each reply's transfer time and
energy come from its exact payload bytes and the device's radio, and replies that would
arrive after the round deadline are dropped as stragglers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.costs import ClientCost, is_available, straggles, summarize_round
from fedhar.devices import DeviceProfile
from fedhar.train import derive_seed
from fedhar.wire import (
    CONFIG_KEY,
    NodeInfo,
    content_nbytes,
    decline_reason,
    metric_value,
    node_info_from_record,
)
from strategies.wrapper import StrategyWrapper


@dataclass
class FleetDirectory:
    """Enrolled nodes by Flower node id."""

    nodes: dict[int, NodeInfo] = field(default_factory=dict)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __getitem__(self, node_id: int) -> NodeInfo:
        return self.nodes[node_id]

    def __len__(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True)
class RunInfo:
    """What wrappers may know about the run they serve."""

    run_id: str
    seed: int
    run_dir: Path
    directory: FleetDirectory
    device_kinds: Mapping[str, str] = field(default_factory=dict)  # device name -> kind


class FleetSimulation(StrategyWrapper):
    """Wraps ``strategy``; enrolls nodes and, given devices, simulates their round.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy.
    run : RunInfo
        The run; its directory is filled at enrollment.
    expected_keys : Mapping[int, bytes]
        Partition id -> the device signing key the server knows for it.
    catalogue : Mapping[str, DeviceProfile]
        Device profiles by name; empty: no device simulation (enrollment only).
    deadline_s : float | None
        Round deadline in simulated seconds; late replies are dropped as stragglers.
    enroll_timeout_s : float
        How long enrollment waits for nodes to answer.
    availability_traces : Mapping[str, Sequence[int]] | None
        Device name -> 0/1 per round (cycled), replacing that device's availability probability.
    """

    def __init__(
        self,
        strategy: Strategy,
        run: RunInfo,
        expected_keys: Mapping[int, bytes],
        catalogue: Mapping[str, DeviceProfile] | None = None,
        deadline_s: float | None = None,
        enroll_timeout_s: float = 120.0,
        availability_traces: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(strategy)
        self.run = run
        self.expected_keys = dict(expected_keys)
        self.catalogue = dict(catalogue or {})
        self.deadline_s = deadline_s
        self.enroll_timeout_s = enroll_timeout_s
        self.availability_traces = dict(availability_traces or {})
        self._download: dict[int, int] = {}
        self._dropouts = 0
        self._round = summarize_round([])

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> Fleet of %d device types, deadline %s s",
            len(self.catalogue),
            self.deadline_s,
        )
        self.strategy.summary()

    def round_stats(self) -> dict[str, float]:
        if not self.catalogue:
            return {}  # enrollment only: there are no device figures to report
        return {
            "fleet/completed": float(self._round.completed),
            "fleet/dropouts": float(self._round.dropouts),
            "dropped/straggler": float(self._round.stragglers),
            "fleet/sim_wall_clock_s": self._round.wall_clock_s,
            "fleet/sim_energy_j": self._round.energy_j,
        }  # declines are counted by Tracking, which sees the replies that carry them

    def enroll(self, grid: Grid) -> None:
        """Ask every node who it is; keep those whose signing key the server expects."""
        messages = [
            Message(
                RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 0})}), node, MessageType.QUERY
            )
            for node in grid.get_node_ids()
        ]
        for reply in grid.send_and_receive(messages, timeout=self.enroll_timeout_s):
            if reply.has_error():
                log(
                    WARNING,
                    "node %d failed to enroll: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            info = node_info_from_record(reply.content)
            expected = self.expected_keys.get(info.partition_id)
            if info.node_id != reply.metadata.src_node_id or info.signing_key != expected:
                log(WARNING, "node %d enrolled with an unexpected identity; ignored", info.node_id)
                continue
            self.run.directory.nodes[info.node_id] = info
        log(INFO, "enrolled %d of %d nodes", len(self.run.directory), len(messages))

    def _profile(self, node_id: int) -> DeviceProfile | None:
        info = self.run.directory.nodes.get(node_id)
        return None if info is None else self.catalogue.get(info.device)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.run.directory.nodes:
            self.enroll(grid)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        available = [m for m in messages if self._available(m.metadata.dst_node_id, server_round)]
        self._dropouts = len(messages) - len(available)
        self._round = summarize_round([], dropouts=self._dropouts)
        self._download = {m.metadata.dst_node_id: content_nbytes(m.content) for m in available}
        return available

    def _available(self, node_id: int, server_round: int) -> bool:
        profile = self._profile(node_id)
        if profile is None:
            return True
        info = self.run.directory[node_id]
        seed = derive_seed(self.run.seed, info.partition_id)
        return is_available(profile, server_round, seed, self.availability_traces.get(profile.name))

    def _cost(self, reply: Message) -> ClientCost | None:
        profile = self._profile(reply.metadata.src_node_id)
        if profile is None or reply.has_error() or decline_reason(reply.content) is not None:
            return None
        bandwidth = profile.radio_bandwidth_bps
        up_s = content_nbytes(reply.content) * 8 / bandwidth
        down_s = self._download.get(reply.metadata.src_node_id, 0) * 8 / bandwidth
        compute_s = metric_value(reply.content, "sim-compute-s", default=0.0)
        energy = profile.active_power_w * compute_s + profile.radio_power_w * (up_s + down_s)
        return ClientCost(compute_s, up_s, down_s, energy)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept: list[Message] = []
        costs: list[ClientCost] = []
        declines = 0
        for reply in replies:
            cost = self._cost(reply)
            if cost is not None:
                costs.append(cost)
            declines += not reply.has_error() and decline_reason(reply.content) is not None
            if cost is None or not straggles(cost, self.deadline_s):
                kept.append(reply)
        self._round = summarize_round(costs, self.deadline_s, self._dropouts, declines)
        return self.strategy.aggregate_train(server_round, kept)
