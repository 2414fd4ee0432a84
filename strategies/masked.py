"""Masked FedAvg: every node trains its own sub-model; each element averages over its trainers.

Per round and node, a width policy (`fedhar.partial.widths`) picks the sub-model the node's
largest width allows, the node gets that sub-state and its width, and its reply is scattered
back into global coordinates. Only the entries the reply lists as trained count; elements
nobody trained keep their value (`fedhar.partial.aggregate.aggregate_masked`). A reply whose
entries or shapes differ from what the node was sent is rejected (``partial/rejected/<code>``)
and left out.

Under secure aggregation (`strategies.secagg`), `coordinate_slices` tells the wrapper which
global coordinates each node trains, and the wrapper hands this class one reply holding the
averaged model (``secure-sum``), which it takes as the round's masked average.

With ``static_bn`` (HeteroFL's sBN, `fedhar.partial.static_bn`), BatchNorm statistics in the
replies are ignored: after aggregating, the server queries the round's contributors
(``query.bn_stats``) for the sums of the new global model's BatchNorm inputs at every width of
``levels``, writes the full width's statistics into the global model and keeps every width's in
`width_statistics` for server-side evaluation. A contributor that fails the query is left
out (``bn-stats/failed``); with no answers the statistics stay as they were. With ``scaler``,
nodes divide hidden outputs by their width while training.

Personal entries (FedPer, FedRep, FedBN: `strategies.personal`) stay on the nodes. The server
sends them to a node only until that node has replied once (so a node always has a starting
point, even after a resume, and downlink carries only shared entries afterwards), lists their
names in the config under ``personal-names`` for the client mod `clients.personal`, and never
aggregates them: the global copy keeps its initial values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from torch import nn

from fedhar.models import build_model
from fedhar.partial.aggregate import Contribution, aggregate_masked
from fedhar.partial.spec import ParamSlice, SubModelSpec, extract, scatter, slice_width
from fedhar.partial.static_bn import (
    LayerSums,
    is_statistic,
    merge_sums,
    statistics_from_sums,
)
from fedhar.partial.widths import WIDTH_LEVELS, HeteroFLWidths, WidthAssignment, WidthPolicy
from fedhar.wire import (
    BN_STATS_ACTION,
    METRICS_KEY,
    PERSONAL_NAMES_KEY,
    SECURE_SUM_KEY,
    arrays_to_state,
    bn_stats_request,
    bn_sums_from_reply,
    config_int,
    metric_value,
    state_to_arrays,
    trained_names,
)
from strategies.run_info import RunInfo
from strategies.wrapper import RoundReport


@dataclass(frozen=True)
class SentSpec:
    """What one node was sent this round: its sub-model spec and the entries it must return."""

    spec: SubModelSpec
    expected: tuple[str, ...]  # entries the reply carries: the spec minus personal entries


def restrict(spec: SubModelSpec, names: Iterable[str]) -> SubModelSpec:
    """The spec narrowed to ``names`` (kept in spec order)."""
    chosen = set(names)
    params = tuple((n, sl) for n, sl in spec.params if n in chosen)
    return SubModelSpec(spec.kind, params, width=spec.width, offset=spec.offset)


def infer_dims(model_name: str, state: dict[str, Any]) -> tuple[int, int]:
    """(in_channels, num_classes) of a bundled model's state, checked against a rebuild.

    The first entry is the input layer's weight (dim 1: input channels) and ``head.weight``
    has one row per class (the models' structural contract).
    """
    if "head.weight" not in state:
        raise ValueError(f"state has no 'head.weight'; is it a {model_name!r} state?")
    first = next(iter(state.values()))
    in_channels, num_classes = int(first.shape[1]), int(state["head.weight"].shape[0])
    rebuilt = build_model(model_name, in_channels, num_classes).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != {k: tuple(v.shape) for k, v in rebuilt.items()}:
        raise ValueError(
            f"the global arrays are not a full-width {model_name!r} state; set the strategy's "
            "`model` to the model name the run trains (cfg.model.name) and model.width=1.0"
        )
    return in_channels, num_classes


def check_sums(answer: dict[float, LayerSums], channels: dict[float, dict[str, int]]) -> None:
    """ValueError unless ``answer`` holds sums of every BatchNorm at every width, over the
    ``channels`` each has."""
    if sorted(answer) != sorted(channels):
        raise ValueError(f"sums for widths {sorted(answer)}, asked for {sorted(channels)}")
    for width, layers in answer.items():
        got = {name: int(s.total.shape[0]) for name, s in layers.items()}
        if got != channels[width]:
            raise ValueError(f"width {width:g}: sums over {got}, the model has {channels[width]}")


class MaskedFedAvg(RoundReport, FedAvg):
    """FedAvg over sub-models: per-node sub-states down, masked averaging up.

    Parameters
    ----------
    model : str
        The bundled model the run trains (``build_model`` name); the global arrays are its
        full-width state.
    levels : tuple[float, ...]
        Widths the width policy may hand out, increasing; also the widths evaluated on the
        server. This class hands out the full model only (nodes that cannot hold it sit the
        round out); subclasses override `width_policy`.
    run : RunInfo | None
        The run; each node's largest width is ``run.directory[node].max_width``. None (unit
        tests, no fleet): every node can hold every width.
    static_bn : bool
        Static BatchNorm: statistics from a query after each round, not from the updates.
    scaler : bool
        Ask nodes to divide hidden outputs by their width in training (HeteroFL's scaler).
    stats_timeout_s : float
        How long the static-BatchNorm query waits for answers.
    **kwargs
        Passed to Flower's ``FedAvg`` (sampling fractions, minimum nodes, record keys).
    """

    prefix = "partial"
    secure_sums = False  # set by strategies.secagg: accept its one averaged reply per round

    def __init__(
        self,
        model: str = "microbi_convlstm",
        levels: tuple[float, ...] = WIDTH_LEVELS,
        run: RunInfo | None = None,
        static_bn: bool = False,
        scaler: bool = False,
        stats_timeout_s: float = 600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not stats_timeout_s > 0:
            raise ValueError(f"stats_timeout_s must be > 0 seconds, got {stats_timeout_s}")
        self.model = model
        self.static_bn, self.scaler = bool(static_bn), bool(scaler)
        self.stats_timeout_s = float(stats_timeout_s)
        self.width_statistics: dict[float, dict[str, torch.Tensor]] = {}
        self.levels = tuple(float(w) for w in levels)
        self.run = run
        self.policy = self.width_policy()
        self._full: nn.Module | None = None
        self._dims: tuple[int, int] = (0, 0)  # (in_channels, num_classes), from the arrays
        self._personal: tuple[str, ...] = ()
        self._specs: dict[tuple[float, int], SubModelSpec] = {}
        self._sent: dict[int, SentSpec] = {}
        self._global: dict[str, Any] = {}
        self._holds_personal: set[int] = set()
        self._grid: Grid | None = None
        self._batch_size = 1

    def width_policy(self) -> WidthPolicy:
        """The full model for every node that can hold it: masked FedAvg over training plans."""
        return HeteroFLWidths((1.0,))

    def personal_names(self, model: nn.Module) -> tuple[str, ...]:
        """State entries that stay on the nodes; none here."""
        return ()

    def summary(self) -> None:
        log(INFO, "\t├──> %s of %s at widths %s%s%s", type(self).__name__, self.model,
            self.levels, ", static BatchNorm" if self.static_bn else "",
            ", scaler" if self.scaler else "")  # fmt: skip
        super().summary()

    def _max_width(self, node_id: int) -> float:
        """The node's largest width: 1.0 without a run, 0.0 (sits out) if it never enrolled."""
        if self.run is None:
            return 1.0
        if node_id not in self.run.directory:
            log(WARNING, "node %d is not in the fleet directory; it sits out", node_id)
            return 0.0
        return self.run.directory[node_id].max_width

    def _spec(self, assignment: WidthAssignment) -> SubModelSpec:
        assert self._full is not None
        key = (assignment.width, assignment.offset)
        if key not in self._specs:
            in_channels, num_classes = self._dims
            sub = build_model(self.model, in_channels, num_classes, assignment.width)
            self._specs[key] = slice_width(self._full, sub, assignment.width, assignment.offset)
        return self._specs[key]

    def _prepare(self, arrays: ArrayRecord) -> None:
        """Remember the global state; build the full model the first time."""
        self._global = arrays_to_state(arrays)
        if self._full is None:
            self._dims = infer_dims(self.model, self._global)
            self._full = build_model(self.model, *self._dims)
            self._personal = self.personal_names(self._full)

    def _content(self, node_id: int, spec: SubModelSpec, config: ConfigRecord) -> RecordDict:
        """The node's sub-state (without personal entries it already holds) and config."""
        keep_personal = node_id not in self._holds_personal
        chosen = restrict(spec, [n for n in spec.names if keep_personal or n not in self._personal])
        node_config = ConfigRecord(dict(config))
        node_config["width"] = spec.width
        if self.scaler:
            node_config["scaler"] = True
        if self._personal:
            node_config[PERSONAL_NAMES_KEY] = list(self._personal)
        sub_state = extract(self._global, chosen)
        return RecordDict(
            {self.arrayrecord_key: state_to_arrays(sub_state), self.configrecord_key: node_config}
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample as FedAvg does, then send each node the sub-model its width allows."""
        self._prepare(arrays)
        self.start_round()
        self._grid = grid
        if self.static_bn:  # the statistics pass batches as training does
            self._batch_size = config_int(config, "batch-size")
        self._sent, self._specs = {}, {}
        messages = []
        for sampled in super().configure_train(server_round, arrays, config, grid):
            node_id = sampled.metadata.dst_node_id
            try:
                assignment = self.policy.assign(self._max_width(node_id), server_round, node_id)
            except ValueError as too_small:
                log(INFO, "node %d sits out round %d: %s", node_id, server_round, too_small)
                self.count("skipped")
                continue
            spec = self._spec(assignment)
            expected = tuple(n for n in spec.names if n not in self._personal)
            self._sent[node_id] = SentSpec(spec, expected)
            content = self._content(
                node_id, spec, sampled.content.config_records[self.configrecord_key]
            )
            messages.append(Message(content, node_id, MessageType.TRAIN))
        return messages

    def coordinate_slices(self, node_id: int) -> dict[str, ParamSlice] | None:
        """The global coordinates ``node_id`` trains this round (its reply's entries), if sent."""
        sent = self._sent.get(node_id)
        if sent is None:
            return None
        slices = sent.spec.slices()
        return {name: slices[name] for name in sent.expected}

    def _secure_sum(self, reply: Message) -> Contribution:
        """The secure-aggregation reply as one contribution: the averaged shared entries."""
        senders = reply.content.config_records[SECURE_SUM_KEY]["senders"]
        self._holds_personal.update(int(n) for n in senders)  # type: ignore[union-attr]
        state = arrays_to_state(reply.content.array_records[self.arrayrecord_key])
        shared = [n for n in self._global if n not in self._personal]
        values = {n: state[n] for n in shared}
        mask = {n: torch.ones(state[n].shape, dtype=torch.bool) for n in shared}
        return values, mask, 1.0

    def _reject_reason(self, reply: Message) -> str | None:
        """Why a reply cannot be aggregated, or None when it matches what was sent."""
        sent = self._sent.get(reply.metadata.src_node_id)
        if sent is None:
            return "unexpected-node: this node was not sent a sub-model this round"
        if self.arrayrecord_key not in reply.content.array_records:
            return f"no-arrays: the reply has no {self.arrayrecord_key!r} ArrayRecord"
        arrays = reply.content.array_records[self.arrayrecord_key]
        missing = sorted(set(sent.expected) - set(arrays))
        extra = sorted(set(arrays) - set(sent.expected))
        if missing or extra:
            hint = " (personal entries: is the clients.personal mod installed?)" if extra else ""
            return f"names: missing {missing[:5]}, extra {extra[:5]}{hint}"
        slices = sent.spec.slices()
        for name in sent.expected:
            got, want = tuple(arrays[name].shape), slices[name].shape
            if got != want:
                return f"shapes: {name} is {got}, the node was sent {want}"
        metrics = reply.content.metric_records.get(METRICS_KEY)
        weight = None if metrics is None else metrics.get(self.weighted_by_key)
        if not isinstance(weight, int | float) or not weight >= 0:
            return f"weight: {self.weighted_by_key!r} is missing or negative ({weight!r})"
        return None

    def _contribution(self, reply: Message) -> Contribution | None:
        """The reply's trained entries in global coordinates; None if it trained nothing.

        Trained names the reply does not carry (e.g. a QAT observer's buffers) are ignored.
        """
        sent = self._sent[reply.metadata.src_node_id]
        state = arrays_to_state(reply.content.array_records[self.arrayrecord_key])
        trained = trained_names(reply.content)
        names = [n for n in sent.expected if trained is None or n in trained]
        if self.static_bn:
            names = [n for n in names if not is_statistic(n)]
        if not names:
            return None
        values, mask = scatter(
            {n: state[n] for n in names}, restrict(sent.spec, names), self._global
        )
        weight = metric_value(reply.content, self.weighted_by_key)
        return values, mask, weight

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Masked average of the matching replies; mismatching ones are rejected and counted."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        accepted, contributions, senders = [], [], []
        for reply in valid:
            if self.secure_sums and SECURE_SUM_KEY in reply.content.config_records:
                self.accept()
                accepted.append(reply)
                summed = reply.content.config_records[SECURE_SUM_KEY]["senders"]
                senders += [int(n) for n in summed]  # type: ignore[union-attr]
                contributions.append(self._secure_sum(reply))
                continue
            reason = self._reject_reason(reply)
            if reason is not None:
                code, _, detail = reason.partition(": ")
                self.reject(reply.metadata.src_node_id, code, detail)
                continue
            self.accept()
            accepted.append(reply)
            senders.append(reply.metadata.src_node_id)
            self._holds_personal.add(reply.metadata.src_node_id)
            contribution = self._contribution(reply)
            if contribution is not None:
                contributions.append(contribution)
        if not accepted:
            return None, None
        new_state, counts = aggregate_masked(self._global, contributions)
        if len(accepted) == len(contributions) == 1 and SECURE_SUM_KEY in accepted[0].content:
            counts = {}  # one secure sum: strategies.secagg counts its contributors
        layers: dict[str, int] = {}
        for name, contributors in counts.items():
            layer = name.rpartition(".")[0] or name
            layers[layer] = max(layers.get(layer, 0), contributors)
        for layer, contributors in layers.items():
            self.count(f"contributors/{layer}", contributors)
        if layers:
            log(INFO, "aggregate_train: contributors per layer %s", layers)
        if self.static_bn:
            new_state = self._with_static_statistics(new_state, senders)
        self._global = new_state
        metrics = self.train_metrics_aggr_fn([m.content for m in accepted], self.weighted_by_key)
        return state_to_arrays(new_state), metrics

    def _with_static_statistics(
        self, state: dict[str, torch.Tensor], nodes: list[int]
    ) -> dict[str, torch.Tensor]:
        """``state`` with full-width statistics from the nodes' BatchNorm sums (static BN);
        every width's statistics go to `width_statistics`."""
        assert self._grid is not None
        if not any(n.endswith(".running_mean") for n in state):
            return state  # no BatchNorm: nothing to compute
        widths = sorted({*self.levels, 1.0})
        messages = [
            Message(
                bn_stats_request(state, widths, self._batch_size),
                node,
                f"{MessageType.QUERY}.{BN_STATS_ACTION}",
            )
            for node in nodes
        ]
        channels = self._batchnorm_channels(widths)
        answers: list[dict[float, LayerSums]] = []
        for reply in self._grid.send_and_receive(messages, timeout=self.stats_timeout_s):
            node = reply.metadata.src_node_id
            try:
                if reply.has_error():
                    raise ValueError(f"the query failed: {reply.error.reason}")
                answer = bn_sums_from_reply(reply.content)
                check_sums(answer, channels)
            except ValueError as failure:
                self.count("bn-stats/failed")
                log(WARNING, "static BatchNorm: node %d left out: %s", node, failure)
                continue
            answers.append(answer)
        self.count("bn-stats/answers", len(answers))
        if not answers:
            log(WARNING, "static BatchNorm: no node answered; the statistics stay as they were")
            return state
        for width in widths:
            self.width_statistics[width] = statistics_from_sums(
                merge_sums(answer[width] for answer in answers)
            )
        full = self.width_statistics[1.0]
        return state | {n: t for n, t in full.items() if n not in self._personal}

    def _batchnorm_channels(self, widths: list[float]) -> dict[float, dict[str, int]]:
        """Per width, the channels of every BatchNorm of the sub-model."""
        return {
            width: {
                n.removesuffix(".running_mean"): sl.shape[0]
                for n, sl in self._spec(WidthAssignment(width)).params
                if n.endswith(".running_mean")
            }
            for width in widths
        }

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluation of the full model; with personal entries, each node evaluates
        its own sub-model with its own personal entries (which the server does not send)."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._prepare(arrays)
        if not self._personal:
            return messages
        out = []
        for sampled in messages:
            node_id = sampled.metadata.dst_node_id
            try:
                assignment = self.policy.assign(self._max_width(node_id), server_round, node_id)
            except ValueError:  # never trained: nothing personal, the full model
                assignment = WidthAssignment(1.0)
            spec = self._spec(assignment)
            content = self._content(
                node_id, spec, sampled.content.config_records[self.configrecord_key]
            )
            out.append(Message(content, node_id, MessageType.EVALUATE))
        return out
