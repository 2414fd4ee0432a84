"""Client mod that sends each train reply as a compressed delta (and can open an int8 model).

Pairs with ``strategies.compression.CompressedUpdates``. On a train message the mod remembers
the global arrays it received, lets the handler train, and replaces the reply's ``arrays``
ArrayRecord by ``fedhar.transport.codec``'s encoding of Δ = local - global over the float
tensors, as bytes in a ``compressed`` ConfigRecord {"payload": bytes}. Every other record
(metrics, client, trained) passes unchanged; declines and errors pass through.

Integer buffers (BatchNorm's ``num_batches_tracked``) are not sent: the server keeps the values
it sent. They are step counters that BatchNorm with a momentum never reads, and sending them
raw would cost more than all the scale codes of an int8 payload.

Stochastic rounding draws from ``derive_seed(seed, server round, partition id)``, so a run is
reproducible. With ``error_feedback`` the residual (what compression dropped) lives in
``context.state`` as an ArrayRecord and is added to the next round's delta; it restarts from
zero when the model's tensors change (e.g. a different width).

Downlink: when the server encodes this node's global model (``CompressedUpdates``'
``downlink_bits``, or ``downlink_bits_by_kind`` for its device kind), the float tensors arrive
encoded with ``encode_state`` in a ``compressed`` ConfigRecord {"payload", "schema", "bits"}
(the integer buffers stay in a small ``arrays`` record); the mod decodes them before the
handler runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedhar.seeding import derive_seed
from fedhar.transport.codec import CodecConfig, check_bits, decode_state, encode_update
from fedhar.transport.payload import from_bytes, schema_from_bytes, to_bytes
from fedhar.wire import (
    ARRAYS_KEY,
    COMPRESSED_KEY,
    CONFIG_KEY,
    RESIDUAL_KEY,
    arrays_to_state,
    message_kind,
    personal_names,
    state_to_arrays,
)

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def _node(context: Context) -> int:
    """The stable identity of this node: its partition id (the node id if there is none)."""
    return int(context.node_config.get("partition-id", context.node_id))


def open_downlink(content: RecordDict) -> RecordDict:
    """Content with the encoded global model decoded back into an ``arrays`` ArrayRecord."""
    record = content.config_records[COMPRESSED_KEY]
    payload, schema_bytes, bits = record.get("payload"), record.get("schema"), record.get("bits")
    if not isinstance(payload, bytes) or not isinstance(schema_bytes, bytes):
        raise ValueError(f"'{COMPRESSED_KEY}' downlink record needs payload and schema bytes")
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise ValueError(f"'{COMPRESSED_KEY}' downlink record needs its integer bit width 'bits'")
    check_bits(bits)
    schema = schema_from_bytes(schema_bytes)
    floats = decode_state(from_bytes(payload, schema), schema, bits=bits)
    ints = (
        arrays_to_state(content.array_records[ARRAYS_KEY])
        if ARRAYS_KEY in content.array_records
        else {}
    )
    opened = RecordDict({k: v for k, v in content.items() if k != COMPRESSED_KEY})
    opened[ARRAYS_KEY] = state_to_arrays({**floats, **ints})
    return opened


def _residual(context: Context, delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The stored residual if it fits this delta's tensors, else None (start afresh)."""
    if RESIDUAL_KEY not in context.state.array_records:
        return None
    residual = arrays_to_state(context.state.array_records[RESIDUAL_KEY])
    fits = residual.keys() == delta.keys() and all(
        residual[n].shape == delta[n].shape for n in delta
    )
    return residual if fits else None


def compress_reply(
    content: RecordDict,
    sent: dict[str, torch.Tensor],
    cfg: CodecConfig,
    rng: np.random.Generator,
    context: Context,
) -> RecordDict:
    """Reply content whose ``arrays`` record became a ``compressed`` delta payload."""
    local = arrays_to_state(content.array_records[ARRAYS_KEY])
    if local.keys() != sent.keys() or any(local[n].shape != sent[n].shape for n in sent):
        raise ValueError(
            "the reply's arrays differ in names or shapes from the model the client received; "
            "compression_mod sends deltas against the received model"
        )
    delta = {n: local[n].double() - sent[n].double() for n in sent if sent[n].is_floating_point()}
    residual = _residual(context, delta) if cfg.error_feedback else None
    encoded, new_residual = encode_update(delta, cfg, rng, residual)
    if new_residual is not None:
        context.state[RESIDUAL_KEY] = state_to_arrays(new_residual)
    compressed = RecordDict({k: v for k, v in content.items() if k != ARRAYS_KEY})
    compressed[COMPRESSED_KEY] = ConfigRecord({"payload": to_bytes(encoded)})
    return compressed


def compression_mod(
    bits: int = 8,
    topk_fraction: float = 1.0,
    error_feedback: bool = False,
    seed: int = 0,
) -> Mod:
    """A Flower mod that compresses train replies (see the module docstring).

    Parameters
    ----------
    bits, topk_fraction, error_feedback : uplink codec settings
        (`fedhar.transport.codec.CodecConfig`).
    seed : run seed; stochastic rounding is seeded from it, the round and the partition id.
    """
    cfg = CodecConfig(bits, topk_fraction, error_feedback)

    def mod(
        msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if message_kind(msg) != MessageType.TRAIN:
            return call_next(msg, context)
        if COMPRESSED_KEY in msg.content.config_records:
            msg.content = open_downlink(msg.content)
        personal = set(personal_names(msg.content))  # kept on the node, never sent up
        received = arrays_to_state(msg.content.array_records[ARRAYS_KEY])
        sent = {name: t for name, t in received.items() if name not in personal}
        server_round = int(str(msg.content.config_records[CONFIG_KEY]["server-round"]))
        reply = call_next(msg, context)
        if reply.has_error() or ARRAYS_KEY not in reply.content.array_records:
            return reply  # an error or a decline: no update to compress
        rng = np.random.default_rng(derive_seed(seed, server_round, _node(context)))
        reply.content = compress_reply(reply.content, sent, cfg, rng, context)
        return reply

    return mod
