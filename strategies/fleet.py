"""The simulated fleet on the server: availability, device costs and stragglers.

Given a device catalogue, the wrapper simulates the devices' round: nodes that are not
available this round are not asked to train (drop-outs), each reply's transfer time and
energy come from its exact payload bytes and the device's radio, and replies that would
arrive after the round deadline are rejected as stragglers. Nodes are looked up in the run's
fleet directory, which enrollment (`strategies.enrollment`) fills before round 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.device.costs import ClientCost, is_available, straggles, summarize_round
from fedhar.device.profiles import DeviceProfile
from fedhar.seeding import derive_seed
from fedhar.wire import content_nbytes, decline_reason, metric_value
from strategies.run_info import RunInfo
from strategies.wrapper import StrategyWrapper


class FleetSimulation(StrategyWrapper):
    """Wraps ``strategy``; simulates the enrolled devices' round (see the module docstring).

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy.
    run : RunInfo
        The run; its directory tells each node's device.
    catalogue : Mapping[str, DeviceProfile]
        Device profiles by name; empty: no device simulation.
    deadline_s : float | None
        Round deadline in simulated seconds; late replies are rejected as stragglers.
    availability_traces : Mapping[str, Sequence[int]] | None
        Device name -> 0/1 per round (cycled), replacing that device's availability probability.
    """

    prefix = "fleet"

    def __init__(
        self,
        strategy: Strategy,
        run: RunInfo,
        catalogue: Mapping[str, DeviceProfile] | None = None,
        deadline_s: float | None = None,
        availability_traces: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(strategy)
        self.run = run
        self.catalogue = dict(catalogue or {})
        self.deadline_s = deadline_s
        self.availability_traces = dict(availability_traces or {})
        self._download: dict[int, int] = {}
        self._dropouts = 0

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
            return {}  # no devices: there are no device figures to report
        return super().round_stats()  # declines are counted by Tracking, which sees them

    def _profile(self, node_id: int) -> DeviceProfile | None:
        info = self.run.directory.nodes.get(node_id)
        return None if info is None else self.catalogue.get(info.device)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.start_round()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        available = [m for m in messages if self._available(m.metadata.dst_node_id, server_round)]
        self._dropouts = len(messages) - len(available)
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
        for reply in replies:
            cost = self._cost(reply)
            if cost is None:
                kept.append(reply)
                continue
            costs.append(cost)
            if straggles(cost, self.deadline_s):
                self.reject(reply.metadata.src_node_id, "straggler",
                            f"simulated round of {cost.total_s:.1f} s misses the "
                            f"{self.deadline_s} s deadline")  # fmt: skip
            else:
                self.accept()
                kept.append(reply)
        summary = summarize_round(costs, self.deadline_s, self._dropouts)
        self.count("completed", summary.completed)
        self.count("dropouts", summary.dropouts)
        self.count("sim_wall_clock_s", summary.wall_clock_s)
        self.count("sim_energy_j", summary.energy_j)
        return self.strategy.aggregate_train(server_round, kept)
