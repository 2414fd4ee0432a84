"""A strategy wrapper that aggregates by secure aggregation: the server sees only sums.

Pairs with ``clients.secagg.secagg_mod``; the protocol is ``fedhar.transport.secagg``. In
``configure_train`` the wrapper takes the inner strategy's train messages (who trains, on which
sub-model), then runs the protocol's first two stages as QUERY messages on the grid, each with
``timeout_s``: *advertise* (round keys and a seed commitment, signed with the key each device
enrolled with) and *share-keys* (encrypted shares, forwarded). The train messages of the nodes
still in carry the third stage: their shares, the coordinate layouts and the ring. In
``aggregate_train`` the fourth stage, *unmask*, gathers shares from the senders; the server
recovers the sum of ``weight * quantized update`` per coordinate and hands the inner strategy
one reply: the weighted average update applied to the global model, with the senders' weight
as its ``num-examples`` and their metrics averaged. Failed clients are the outer wrappers' and
tracking's to report; the inner strategy (and Flower's DP wrappers, which add their noise to
that one average) sees only the sum.

**Partial models.** When the innermost strategy says which coordinates each node trains
(``coordinate_slices``, e.g. `strategies.masked.MaskedFedAvg`), each node's vector covers
exactly those, pairwise masks cover what both nodes of a pair hold, and each element is
averaged over the senders that trained its entry (their ``trained`` records). Otherwise every
node covers the whole model. The server learns per-element sums and how many values were
clipped in all (one more summed coordinate); each sender's weight, metrics and trained entry
names travel in clear, as without secure aggregation.

**Faults.** A node that does not answer a stage, answers for another node, sends a vector of the
wrong length, a weight other than its capped ``num-examples``, more examples than its enrolled
bound (`FleetDirectory.example_bound`: its windows, at most ``max_examples_ratio`` times the
fleet's median; the weight is inside the masked sum, so it cannot be cut as
`strategies.sanitize` cuts plain counts), a malformed share, or shares its neighbours cannot
decrypt is rejected under that code and treated as dropped; a wrong share is
found by checking every recovered seed against its commitment. When too few share holders
remain for some secret (``threshold`` of its holders), the round fails cleanly: the reason is
logged and counted (``secagg/round-failed``), every sender is rejected as ``round-failed``,
and the global model stays as it was. Integer entries and BatchNorm's step counters
(``num_batches_tracked``, which Flower's FedAvg turns into floats) are not aggregated; they
keep the global values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, MultiKrum, Strategy
from flwr.supercore import log

from fedhar.models import STEP_COUNTER
from fedhar.seeding import derive_seed
from fedhar.transport.masking import (
    CLIP_COUNTER,
    CoordinateSpace,
    Layout,
    LayoutError,
    RingSpec,
    unpack,
    weight_sums,
)
from fedhar.transport.secagg import (
    ProtocolError,
    Revealed,
    RoundKeys,
    neighbour_graph,
    recover_sum,
    round_context,
    threshold_for,
    verify_advertised,
)
from fedhar.transport.shamir import is_share
from fedhar.wire import (
    MASKED_KEY,
    METRICS_KEY,
    RUN_ID_KEY,
    SECAGG_KEY,
    arrays_to_state,
    config_blobs,
    config_bytes,
    config_ints,
    decline_reason,
    record_to_bytes,
    trained_names,
)
from strategies.run_info import RunInfo
from strategies.summed import summed_reply
from strategies.wrapper import StrategyWrapper, innermost


class RoundFailed(Exception):
    """Too few clients remain for secure aggregation to recover this round's sum."""


@dataclass
class _Round:
    """What the server keeps between configure_train and aggregate_train."""

    server_round: int
    context: bytes
    ring: RingSpec
    space: CoordinateSpace
    global_state: dict[str, torch.Tensor]
    layouts: dict[int, Layout]
    positions: dict[int, np.ndarray]
    roster: dict[int, tuple[bytes, bytes]]  # node -> (c, s) public keys
    commitments: dict[int, bytes]
    neighbours: dict[int, tuple[int, ...]]
    shared: list[int]  # nodes whose shares went out


ROBUST_AGGREGATORS = (FedMedian, FedTrimmedAvg, MultiKrum, Bulyan)  # Krum is a MultiKrum


class SecureAggregation(StrategyWrapper):
    """Wraps ``strategy``; only the unmasked sum of each round's updates reaches it.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy: FedAvg-like algorithms, or partial-model ones that expose
        ``coordinate_slices(node_id)``.
    run : RunInfo
        The run: its id binds the round keys, its key registry holds the enrolled signing keys.
    bits : int
        Fixed-point bits per coordinate of an update.
    clip : float
        Update values are clipped to [-clip, clip] before quantization (counted per round).
    max_weight : int
        A node's weight is its ``num-examples``, capped here; 1 averages without weights.
    threshold : float
        Share of a secret's holders needed to recover it, in (0.5, 1].
    neighbours : int | None
        SecAgg+ degree of the neighbour graph (at least 2); None: everyone with everyone.
    timeout_s : float
        Timeout of each protocol stage run from the wrapper (advertise, share-keys, unmask).
    max_examples_ratio : float
        A reply claiming more examples than its node's enrolled bound at this ratio is rejected
        (`strategies.run_info.FleetDirectory.example_bound`).
    """

    prefix = "secagg"
    stack_rank = 5  # sums plain updates (inside compression's downlink and encryption)

    def __init__(
        self,
        strategy: Strategy,
        run: RunInfo,
        bits: int = 16,
        clip: float = 4.0,
        max_weight: int = 65536,
        threshold: float = 0.67,
        neighbours: int | None = None,
        timeout_s: float = 60.0,
        max_examples_ratio: float = 10.0,
    ) -> None:
        super().__init__(strategy)
        if isinstance(innermost(strategy), ROBUST_AGGREGATORS):
            raise ValueError(
                f"secure aggregation hands {type(innermost(strategy)).__name__} one sum, so it "
                "would average instead of aggregating robustly; use strategy=fedavg with secagg"
            )
        threshold_for(2, threshold)  # refuse a bad fraction now, not in round 1
        RingSpec.for_cohort(1, bits, clip, max_weight)
        if neighbours is not None and neighbours < 2:
            raise ValueError(f"secagg neighbours={neighbours} must be at least 2, or null")
        self.run = run
        self.bits, self.clip, self.max_weight = int(bits), float(clip), int(max_weight)
        self.threshold = float(threshold)
        self.neighbours = None if neighbours is None else int(neighbours)
        self.timeout_s = float(timeout_s)
        self.max_examples_ratio = float(max_examples_ratio)
        core = innermost(strategy)
        self._slices = getattr(core, "coordinate_slices", None)
        if self._slices is not None:
            core.secure_sums = True  # type: ignore[attr-defined]
        self._grid: Grid | None = None
        self._round: _Round | None = None

    def summary(self) -> None:
        graph = "complete graph" if self.neighbours is None else f"{self.neighbours} neighbours"
        log(INFO, "\t├──> Secure aggregation: %d-bit updates clipped at %g, threshold %g, %s",
            self.bits, self.clip, self.threshold, graph)  # fmt: skip
        self.strategy.summary()

    # -- stages ---------------------------------------------------------------------------

    def _stage(self, stage: str, server_round: int, extra: Mapping[str, Any]) -> ConfigRecord:
        return ConfigRecord(
            {
                "stage": stage,
                RUN_ID_KEY: self.run.transport_id,
                "server-round": server_round,
                **extra,
            }
        )

    def _ask(self, stage: str, configs: Mapping[int, ConfigRecord]) -> dict[int, ConfigRecord]:
        """Send one stage to ``configs``' nodes; their well-formed answers, by node."""
        assert self._grid is not None
        messages = [
            Message(RecordDict({SECAGG_KEY: c}), node, MessageType.QUERY)
            for node, c in configs.items()
        ]
        self.count("bytes-down", sum(len(record_to_bytes(m.content)) for m in messages))
        answers: dict[int, ConfigRecord] = {}
        for reply in self._grid.send_and_receive(messages, timeout=self.timeout_s):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.reject(node, f"{stage}-failed", str(reply.error.reason))
                continue
            self.count("bytes-up", len(record_to_bytes(reply.content)))
            answer = reply.content.config_records.get(SECAGG_KEY)
            if answer is None or answer.get("stage") != stage:
                self.reject(node, "malformed", f"the {stage} answer lacks its secagg record")
            elif answer.get("node-id") != node:
                self.reject(
                    node, "wrong-node", f"node {node} answered as {answer.get('node-id')!r}"
                )
            elif node not in configs:
                self.reject(node, "unexpected-node", f"node {node} was not asked to {stage}")
            else:
                answers[node] = answer
        rejected = {n for n, _ in self.round_rejections()}
        for node in sorted(set(configs) - set(answers) - rejected):
            self.reject(node, f"{stage}-missing", f"no {stage} answer within {self.timeout_s} s")
        return answers

    def _advertise(
        self, server_round: int, nodes: list[int], context: bytes
    ) -> tuple[dict[int, tuple[bytes, bytes]], dict[int, bytes]]:
        """The nodes' verified round keys and self-seed commitments."""
        answers = self._ask(
            "advertise", {n: self._stage("advertise", server_round, {}) for n in nodes}
        )
        roster, commitments = {}, {}
        for node, answer in answers.items():
            signer = self.run.keys.signing_key(node)
            try:
                keys = (config_bytes(answer, "c-public"), config_bytes(answer, "s-public"))
                committed = config_bytes(answer, "seed-commitment")
                if signer is None:
                    raise ProtocolError("bad-signature", "the node has no enrolled signing key")
                signature = config_bytes(answer, "signature")
                verify_advertised(signer, signature, context, node, keys, committed)
            except ValueError as error:  # ProtocolError or a malformed answer
                self.reject(node, "bad-signature", str(error))
                continue
            roster[node], commitments[node] = keys, committed
        return roster, commitments

    def _share_keys(
        self,
        server_round: int,
        roster: dict[int, tuple[bytes, bytes]],
        graph: dict[int, tuple[int, ...]],
    ) -> dict[int, dict[int, bytes]]:
        """Each node's encrypted shares, by recipient."""

        def config(node: int) -> ConfigRecord:
            ids = [node, *graph[node]]
            return self._stage("share-keys", server_round, {
                "neighbours": list(graph[node]), "roster-ids": ids, "threshold": self.threshold,
                "roster-c": [roster[n][0] for n in ids], "roster-s": [roster[n][1] for n in ids],
            })  # fmt: skip

        shared: dict[int, dict[int, bytes]] = {}
        for node, answer in self._ask("share-keys", {n: config(n) for n in roster}).items():
            try:
                to = config_ints(answer, "to")
                blobs = config_blobs(answer, "ciphertexts", len(to))
                if sorted(to) != sorted(graph[node]):
                    raise ValueError("it must hold one ciphertext per neighbour")
            except ValueError as error:
                self.reject(node, "malformed", f"share-keys answer: {error}")
                continue
            shared[node] = dict(zip(to, blobs, strict=True))
        return shared

    def _unmask(self, state: _Round, senders: list[int], dropped: list[int]) -> Revealed:
        """The shares the senders reveal; a holder with a malformed answer is left out."""
        configs = {
            n: self._stage("unmask", state.server_round, {"active": senders, "dropped": dropped})
            for n in senders
        }
        b_shares: dict[int, dict[int, bytes]] = {}
        s_shares: dict[int, dict[int, bytes]] = {}
        for holder, answer in self._ask("unmask", configs).items():
            mine = {holder, *state.neighbours[holder]}
            try:
                b_owners, s_owners = (
                    config_ints(answer, "b-owners"),
                    config_ints(answer, "s-owners"),
                )
                b_given = dict(
                    zip(b_owners, config_blobs(answer, "b-shares", len(b_owners)), strict=True)
                )
                s_given = dict(
                    zip(s_owners, config_blobs(answer, "s-shares", len(s_owners)), strict=True)
                )
                if (
                    not set(b_given) <= set(senders) & mine
                    or not set(s_given) <= set(dropped) & mine
                ):
                    raise ValueError("shares of nodes it was not asked about")
                bad = [
                    o for o, share in (*b_given.items(), *s_given.items()) if not is_share(share)
                ]
                if bad:
                    raise ValueError(f"malformed shares of nodes {bad[:3]}")
            except ValueError as error:
                self.reject(holder, "malformed", f"unmask answer: {error}")
                continue
            for owner, share in b_given.items():
                b_shares.setdefault(owner, {})[holder] = share
            for owner, share in s_given.items():
                s_shares.setdefault(owner, {})[holder] = share
        return Revealed(b_shares, s_shares)

    # -- rounds ---------------------------------------------------------------------------

    def _layout(self, node: int, space: CoordinateSpace) -> Layout:
        slices = self._slices(node) if self._slices is not None else None
        entries = []
        for name in space.names:
            if name == CLIP_COUNTER or slices is None:
                entries.append((name, None))
            elif name in slices:
                indices = slices[name].indices
                entries.append((name, None if all(i is None for i in indices) else indices))
        return Layout(tuple(entries))

    def _check_holders(self, secrets: Iterable[int], alive: Iterable[int],
                       graph: Mapping[int, tuple[int, ...]], stage: str) -> None:  # fmt: skip
        """Fail the round if a secret of ``secrets`` has fewer holders ``alive`` than needed."""
        alive = set(alive)
        if len(alive) < 2:
            raise RoundFailed(f"{len(alive)} node(s) left after {stage}; secure aggregation "
                              "needs at least 2")  # fmt: skip
        for node in sorted(secrets):
            holders = [node, *graph[node]]
            live = sum(1 for h in holders if h in alive)
            need = threshold_for(len(holders), self.threshold)
            if live < need:
                raise RoundFailed(f"after {stage}, node {node} has {live} of {len(holders)} "
                                  f"share holders left, below the threshold {need}")  # fmt: skip

    def _fail(self, server_round: int, reason: str, nodes: Iterable[int]) -> None:
        log(WARNING, "secure aggregation failed in round %d: %s; the model stays unchanged",
            server_round, reason)  # fmt: skip
        self.count("round-failed")
        already = {node for node, _ in self.round_rejections()}
        for node in sorted(set(nodes) - already):
            self.reject(node, "round-failed", reason)
        self._round = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.start_round()
        self._grid, self._round = grid, None
        messages = {
            m.metadata.dst_node_id: m
            for m in self.strategy.configure_train(server_round, arrays, config, grid)
        }
        if not messages:
            return []
        started = time.perf_counter()
        global_state = arrays_to_state(arrays)
        entries = {n: tuple(t.shape) for n, t in global_state.items()
                   if t.is_floating_point() and not n.endswith(STEP_COUNTER)}  # fmt: skip
        space = CoordinateSpace.of({**entries, CLIP_COUNTER: (1,)})
        context = round_context(self.run.transport_id, server_round)
        try:
            try:
                ring = RingSpec.for_cohort(len(messages), self.bits, self.clip, self.max_weight,
                                           max_count=space.size)  # fmt: skip
            except ValueError as too_wide:
                raise RoundFailed(str(too_wide)) from None
            roster, commitments = self._advertise(server_round, sorted(messages), context)
            graph = neighbour_graph(list(roster), self.neighbours,
                                    derive_seed(self.run.seed, server_round))  # fmt: skip
            self._check_holders(roster, roster, graph, "advertise")
            shared = self._share_keys(server_round, roster, graph)
            self._check_holders(shared, shared, graph, "share-keys")
        except RoundFailed as failed:
            self._fail(server_round, str(failed), messages)
            return []
        layouts = {node: self._layout(node, space) for node in shared}
        self._round = _Round(
            server_round, context, ring, space, global_state, layouts,
            {node: layout.flat(space) for node, layout in layouts.items()},
            roster, commitments, graph, sorted(shared),
        )  # fmt: skip
        out = [self._collect_message(messages[node], node, shared) for node in sorted(shared)]
        self.count("server-seconds", time.perf_counter() - started)
        return out

    def _collect_message(self, message: Message, node: int,
                         shared: Mapping[int, Mapping[int, bytes]]) -> Message:  # fmt: skip
        """The node's train message with the third stage: shares, layouts and the ring."""
        state = self._round
        assert state is not None
        inbox = {owner: blobs[node] for owner, blobs in shared.items() if node in blobs}
        peers = [node, *sorted(inbox)]
        distinct = list(dict.fromkeys(state.layouts[p] for p in peers))  # sent once each
        content = RecordDict(dict(message.content.items()))  # messages may share content
        content[SECAGG_KEY] = self._stage("collect", state.server_round, {
            "from": list(inbox), "ciphertexts": list(inbox.values()),
            "space": state.space.to_bytes(), "layout-ids": peers,
            "layout-of": [distinct.index(state.layouts[p]) for p in peers],
            "layouts": [layout.to_bytes() for layout in distinct],
            "bits": state.ring.bits, "clip": state.ring.clip,
            "max-weight": state.ring.max_weight, "ring-bits": state.ring.ring_bits,
        })  # fmt: skip
        message.content = content
        return message

    def _masked_vector(self, reply: Message, state: _Round) -> tuple[np.ndarray, int, list[int]]:
        """The reply's masked vector, weight and refused neighbours, checked."""
        node = reply.metadata.src_node_id
        if node not in state.layouts:
            raise ProtocolError("unexpected-node", f"node {node} did not share keys this round")
        info = reply.content.config_records.get(SECAGG_KEY)
        record = reply.content.config_records.get(MASKED_KEY)
        if info is None or record is None:
            raise ProtocolError("not-masked", "the reply carries no masked vector; is "
                                "clients.secagg.secagg_mod installed?")  # fmt: skip
        if info.get("node-id") != node:
            raise ProtocolError("wrong-node", f"node {node} answered as {info.get('node-id')!r}")
        try:
            vector = unpack(config_bytes(record, "vector"), len(state.positions[node]),
                            state.ring.ring_bits)  # fmt: skip
            refused = config_ints(info, "refused")
        except (LayoutError, ValueError) as error:
            raise ProtocolError("wrong-length", str(error)) from None
        metrics = reply.content.metric_records.get(METRICS_KEY)
        examples = None if metrics is None else metrics.get("num-examples")
        weight = info.get("weight")
        if (not isinstance(examples, int | float) or not math.isfinite(examples)
                or weight != state.ring.weight(int(examples))):  # fmt: skip
            raise ProtocolError("weight-mismatch", f"weight {weight!r} is not the capped "
                                f"num-examples {examples!r}")  # fmt: skip
        bound = self.run.directory.example_bound(node, self.max_examples_ratio)
        if bound is not None and examples > bound:
            raise ProtocolError("num-examples", f"it claims {examples:g} examples, more than "
                                f"its enrolled bound {bound:g}")  # fmt: skip
        if not set(refused) <= set(state.neighbours[node]):
            raise ProtocolError("malformed", "it refused shares of nodes that are not neighbours")
        return vector, int(weight), refused  # type: ignore[arg-type]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        state, self._round = self._round, None
        if state is None:
            return self.strategy.aggregate_train(server_round, [])
        started = time.perf_counter()
        vectors, weights, refused, accepted = {}, {}, {}, {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or decline_reason(reply.content) is not None:
                continue
            try:
                vectors[node], weights[node], refused[node] = self._masked_vector(reply, state)
                accepted[node] = reply
            except ProtocolError as error:
                self.reject(node, error.code, error.detail)
        for accused in sorted({v for nodes in refused.values() for v in nodes}):
            accusers = sorted(u for u, nodes in refused.items() if accused in nodes)
            self.reject(accused, "bad-share", f"nodes {accusers[:3]} could not decrypt its shares")
            for table in (vectors, weights, accepted):
                table.pop(accused, None)
        senders = sorted(vectors)
        dropped = [n for n in state.shared if n not in vectors]
        masked_with = [
            v for v in dropped
            if any(v in state.neighbours[u] and v not in refused[u] for u in senders)
        ]  # fmt: skip
        try:
            self._check_holders(senders, senders, state.neighbours, "masked input")
            self._check_holders(masked_with, senders, state.neighbours, "masked input")
            revealed = self._unmask(state, senders, dropped)
            keys = RoundKeys(state.neighbours, {n: k[1] for n, k in state.roster.items()},
                             state.commitments, {u: refused[u] for u in senders},
                             self.threshold, state.context)  # fmt: skip
            total = recover_sum({u: vectors[u] for u in senders}, state.positions, keys,
                                revealed, dropped, state.space.size)  # fmt: skip
        except (RoundFailed, ProtocolError) as failed:
            self._fail(server_round, str(failed), senders)
            return self.strategy.aggregate_train(server_round, [])
        for _ in senders:
            self.accept()
        new_state = self._average(state, total, weights, accepted)
        self.count("server-seconds", time.perf_counter() - started)
        return self.strategy.aggregate_train(
            server_round, [summed_reply(new_state, accepted, sum(weights.values()))]
        )

    def _average(self, state: _Round, total: np.ndarray, weights: Mapping[int, int],
                 replies: Mapping[int, Message]) -> dict[str, torch.Tensor]:  # fmt: skip
        """The global state plus the weighted average update of every coordinate it received."""
        trained = {n: trained_names(replies[n].content) if self._slices is not None else None
                   for n in weights}  # fmt: skip
        weight_sum = weight_sums(state.space, state.layouts, state.positions, weights, trained)
        signed = state.ring.to_signed(total)
        offsets = state.space.offsets()
        self.count("clipped", float(signed[offsets[CLIP_COUNTER]]))
        sums = signed.astype(np.float64) * state.ring.step
        mean = np.divide(sums, weight_sum, out=np.zeros_like(sums), where=weight_sum > 0)
        new_state = dict(state.global_state)
        layers: dict[str, int] = {}
        for name, shape in zip(state.space.names, state.space.shapes, strict=True):
            if name == CLIP_COUNTER:
                continue
            start, size = offsets[name], math.prod(shape)
            base = state.global_state[name]
            delta = torch.from_numpy(mean[start : start + size].reshape(shape))
            new_state[name] = (base.double() + delta).to(base.dtype)
            layer = name.rpartition(".")[0] or name
            covering = [n for n in weights if name in state.layouts[n].names()
                        and (trained[n] is None or name in trained[n])]  # type: ignore[operator]  # fmt: skip
            layers[layer] = max(layers.get(layer, 0), len(covering))
        for layer, contributors in sorted(layers.items()):
            self.count(f"contributors/{layer}", contributors)
        return new_state
