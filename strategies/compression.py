"""A strategy wrapper that decodes compressed client updates before aggregation.

Pairs with ``clients.compression.compression_mod``. ``configure_train`` passes the inner
strategy's messages through and remembers, per node, the arrays it sent (when that node's
downlink bit width is below 32 it first encodes the float tensors with
``fedhar.transport.codec.encode_state`` and remembers the model as the client will decode it). The
downlink bit width is ``downlink_bits``, or ``downlink_bits_by_kind`` of the node's device kind
(``{"mcu": 8}``: microcontrollers download the global model as int8, phones as float32).
``aggregate_train`` turns every ``compressed`` reply back into a plain ``arrays`` ArrayRecord,
global + decoded delta (integer buffers keep the values sent), so any inner strategy
aggregates as usual.

A payload that does not match the model sent to that node (other schema, shapes, scales,
bit width, truncation, non-finite result) or a reply that is not compressed is rejected with
its reason, counted, and dropped: it never reaches the inner strategy or the global model.
Under secure aggregation (``wrappers=[secagg,compression]``) the uplink is secagg's masked
fixed-point vector, which passes through; compression then applies to the downlink only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO
from typing import TYPE_CHECKING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.transport.codec import (
    PayloadError,
    check_bits,
    decode_state,
    decode_update,
    encode_state,
)
from fedhar.transport.payload import (
    fp32_payload_bytes,
    from_bytes,
    schema_to_bytes,
    to_bytes,
)
from fedhar.wire import (
    ARRAYS_KEY,
    COMPRESSED_KEY,
    MASKED_KEY,
    arrays_to_state,
    decline_reason,
    personal_names,
    state_to_arrays,
)
from strategies.wrapper import StrategyWrapper

if TYPE_CHECKING:
    from strategies.run_info import RunInfo


class UpdateRejected(Exception):
    """A reply that is not a compressed update of the model this node was sent."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def float_schema(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the float tensors: what a compressed payload carries."""
    return {n: tuple(t.shape) for n, t in state.items() if t.is_floating_point()}


def apply_update(state: dict[str, torch.Tensor], payload: object, bits: int) -> ArrayRecord:
    """``state`` + the decoded delta in ``payload``; PayloadError if it does not fit ``state``."""
    if not isinstance(payload, bytes):
        raise PayloadError(f"'{COMPRESSED_KEY}' record lacks its payload bytes")
    expected = float_schema(state)
    delta = decode_update(from_bytes(payload, expected), expected, bits=bits)
    merged = {
        n: (t.double() + delta[n].double()).to(t.dtype) if n in delta else t
        for n, t in state.items()
    }
    if not all(bool(torch.isfinite(merged[n]).all()) for n in delta):
        raise PayloadError("the decoded update overflows the model: non-finite values")
    return state_to_arrays(merged)


class CompressedUpdates(StrategyWrapper):
    """Wraps ``strategy``; decodes compressed updates (see the module docstring).

    Parameters
    ----------
    strategy : the strategy that aggregates the decoded updates.
    run : the run being served: its directory and device kinds tell each node's kind.
    bits : uplink bit width every payload must carry (as the client mod's ``bits``).
    downlink_bits : 32 sends the global model as is; 8, 4 or 2 encode its float tensors.
    downlink_bits_by_kind : device kind -> downlink bit width, overriding ``downlink_bits``
        for the nodes of that kind (needs ``run``).
    """

    prefix = "compression"
    stack_rank = 10  # decodes into plain arrays for the wrappers and the algorithm inside it

    def __init__(
        self,
        strategy: Strategy,
        run: RunInfo | None = None,
        bits: int = 8,
        downlink_bits: int = 32,
        downlink_bits_by_kind: Mapping[str, int] | None = None,
    ) -> None:
        check_bits(bits)
        by_kind = dict(downlink_bits_by_kind or {})
        for value in (downlink_bits, *by_kind.values()):
            check_bits(value)
        if by_kind and run is None:
            raise ValueError("downlink_bits_by_kind needs the run, to look up each node's device")
        super().__init__(strategy)
        self.run = run
        self.bits, self.downlink_bits, self.downlink_bits_by_kind = bits, downlink_bits, by_kind
        self._sent: dict[int, dict[str, torch.Tensor]] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> CompressedUpdates: %d-bit uplink, %d-bit downlink %s around:",
            self.bits, self.downlink_bits, self.downlink_bits_by_kind or "")  # fmt: skip
        self.strategy.summary()

    def node_downlink_bits(self, node_id: int) -> int:
        """The downlink bit width of ``node_id``: by its device kind, else ``downlink_bits``."""
        if not self.downlink_bits_by_kind or self.run is None:
            return self.downlink_bits
        directory = self.run.directory
        device = directory[node_id].device if node_id in directory else None
        kind = self.run.device_kinds.get(device) if device is not None else None
        if kind is None:
            raise ValueError(
                f"node {node_id} has no known device kind (device {device!r}); "
                "downlink_bits_by_kind needs a fleet of catalogued devices"
            )
        return self.downlink_bits_by_kind.get(kind, self.downlink_bits)

    def _encode_downlink(
        self, content: RecordDict, bits: int
    ) -> tuple[RecordDict, dict[str, torch.Tensor]]:
        """The message content with an encoded model, and that model as the client decodes it."""
        state = arrays_to_state(content.array_records[ARRAYS_KEY])
        schema = float_schema(state)
        encoded = encode_state({n: state[n] for n in schema}, bits)
        decoded = decode_state(encoded, schema)
        payload = ConfigRecord(
            {"payload": to_bytes(encoded), "schema": schema_to_bytes(schema), "bits": bits}
        )
        out = RecordDict({k: v for k, v in content.items() if k != ARRAYS_KEY})
        out[COMPRESSED_KEY] = payload
        ints = {n: t for n, t in state.items() if n not in schema}
        if ints:
            out[ARRAYS_KEY] = state_to_arrays(ints)
        return out, {n: decoded[n] if n in schema else t for n, t in state.items()}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.start_round()
        for direction in ("up", "up-fp32", "down"):
            self.count(f"bytes-{direction}", 0)
        self._sent = {}
        encoded: dict[tuple[int, int], tuple[RecordDict, dict[str, torch.Tensor]]] = {}
        for message in messages:
            bits = self.node_downlink_bits(message.metadata.dst_node_id)
            if bits == 32:
                sent = arrays_to_state(message.content.array_records[ARRAYS_KEY])
            else:  # strategies may share one content among messages: encode it once per width
                key = (id(message.content), bits)
                if key not in encoded:
                    encoded[key] = self._encode_downlink(message.content, bits)
                content, sent = encoded[key]
                message.content = content
                self.count("bytes-down", len(content[COMPRESSED_KEY]["payload"]))  # type: ignore[arg-type]
            personal = set(personal_names(message.content))  # never sent back up
            self._sent[message.metadata.dst_node_id] = {
                name: t for name, t in sent.items() if name not in personal
            }
        return messages

    def _decode(self, message: Message) -> Message:
        """The reply with its compressed delta applied to what that node was sent."""
        node = message.metadata.src_node_id
        if COMPRESSED_KEY not in message.content.config_records:
            raise UpdateRejected(
                "not-compressed", "reply carries no compressed update; is compression_mod set?"
            )
        if node not in self._sent:
            raise UpdateRejected("unexpected-node", f"node {node} was sent no model this round")
        payload = message.content.config_records[COMPRESSED_KEY].get("payload")
        arrays = apply_update(self._sent[node], payload, self.bits)
        self.count("bytes-up", len(payload))  # type: ignore[arg-type]
        self.count("bytes-up-fp32", fp32_payload_bytes(float_schema(self._sent[node])))
        content = RecordDict({k: v for k, v in message.content.items() if k != COMPRESSED_KEY})
        content[ARRAYS_KEY] = arrays
        message.content = content
        return message

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = []
        for message in replies:
            if message.has_error() or decline_reason(message.content) is not None:
                kept.append(message)
                continue
            if MASKED_KEY in message.content.config_records:  # secure aggregation's own uplink
                kept.append(message)
                continue
            try:
                kept.append(self._decode(message))
                self.accept()
            except UpdateRejected as rejected:
                self.reject(message.metadata.src_node_id, rejected.code, rejected.detail)
            except PayloadError as error:
                self.reject(message.metadata.src_node_id, "bad-payload", error.reason)
        return self.strategy.aggregate_train(server_round, kept)
