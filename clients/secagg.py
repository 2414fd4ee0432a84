"""Client mod for secure aggregation: answers the protocol's stages and masks the update.

Pairs with ``strategies.secagg.SecureAggregation``; the protocol is
``fedhar.transport.secagg``. Stages arrive as messages carrying a ``secagg`` ConfigRecord:

- QUERY ``advertise``: fresh round keys and a commitment to the self-mask seed, signed with
  the device identity the node enrolled with (its key in the run's key store,
  ``fedhar.transport.keystore``);
- QUERY ``share-keys``: encrypted shares of the round's seeds for each neighbour (refused
  with fewer than ``min_neighbours``);
- TRAIN ``collect``: the neighbours' shares and the coordinate layouts ride with the train
  message; the handler trains, and its ``arrays`` record is replaced by the masked update:
  ``weight * quantize(local - received)`` over the node's coordinates, in the ring, masked.
  Entries the update did not change (not in its ``trained`` record) contribute zero; the
  count of clipped values rides as one more masked coordinate. Neighbours whose shares do not
  decrypt are never masked with and are named in the reply (``refused``);
- QUERY ``unmask``: the shares the server may have, under the protocol's rules.

Anything else passes through. A train message without ``collect`` instructions is refused:
a node with this mod never sends an update in clear. The round's secrets live in the node's
state under ``secagg-round``, which ``clients.state_store`` never writes to disk, and are
dropped once revealed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import Mod

from fedhar.seeding import derive_seed
from fedhar.transport.keystore import ClientKeys
from fedhar.transport.masking import CLIP_COUNTER, CoordinateSpace, Layout, RingSpec, pack
from fedhar.transport.secagg import ClientRound, ProtocolError, advertised, round_context
from fedhar.wire import (
    ARRAYS_KEY,
    MASKED_KEY,
    RUN_ID_KEY,
    SECAGG_KEY,
    SECAGG_STATE_KEY,
    arrays_to_state,
    config_blobs,
    config_bytes,
    config_float,
    config_int,
    config_ints,
    message_kind,
    metric_value,
    trained_names,
)

Handler = Callable[[Message, Context], Message]


def _load(context: Context, stage: str, round_id: bytes) -> ClientRound:
    record = context.state.config_records.get(SECAGG_STATE_KEY)
    if record is None or record.get("context") != round_id:
        raise ProtocolError(
            "out-of-order", f"stage {stage!r} for a round this node did not advertise keys in"
        )
    return ClientRound.from_state(dict(record))


def _save(context: Context, state: ClientRound) -> None:
    context.state[SECAGG_STATE_KEY] = ConfigRecord(state.to_state())  # type: ignore[arg-type]


def _round_id(config: ConfigRecord) -> bytes:
    return round_context(str(config.get(RUN_ID_KEY)), config_int(config, "server-round"))


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _advertise(
    context: Context, keys: ClientKeys, round_id: bytes, min_neighbours: int
) -> ConfigRecord:
    state = ClientRound(node_id=context.node_id, context=round_id, min_neighbours=min_neighbours)
    _save(context, state)
    c_public, s_public = state.public_keys()
    committed = state.seed_commitment()
    identity = keys.store.device(_partition(context))
    signature = identity.sign(advertised(round_id, context.node_id, c_public, s_public, committed))
    return ConfigRecord(
        {
            "c-public": c_public,
            "s-public": s_public,
            "seed-commitment": committed,
            "signature": signature,
        }
    )


def _share_keys(config: ConfigRecord, context: Context, round_id: bytes) -> ConfigRecord:
    state = _load(context, "share-keys", round_id)
    ids = config_ints(config, "roster-ids")
    keys = zip(
        config_blobs(config, "roster-c", len(ids)),
        config_blobs(config, "roster-s", len(ids)),
        strict=True,
    )
    roster = dict(zip(ids, keys, strict=True))
    fraction = config_float(config, "threshold")
    out = state.share_keys(roster, config_ints(config, "neighbours"), fraction)
    _save(context, state)
    return ConfigRecord({"to": list(out), "ciphertexts": list(out.values())})


def _unmask(config: ConfigRecord, context: Context, round_id: bytes) -> ConfigRecord:
    state = _load(context, "unmask", round_id)
    b_shares, s_shares = state.reveal(config_ints(config, "active"), config_ints(config, "dropped"))
    del context.state[SECAGG_STATE_KEY]  # revealed once; nothing of the round is kept
    return ConfigRecord(
        {
            "b-owners": list(b_shares),
            "b-shares": list(b_shares.values()),
            "s-owners": list(s_shares),
            "s-shares": list(s_shares.values()),
        }
    )


def _update_vector(
    sent: dict[str, torch.Tensor], reply: RecordDict, layout: Layout, space: CoordinateSpace
) -> np.ndarray:
    """local - received over the layout's entries, flattened in layout order."""
    local = arrays_to_state(reply.array_records[ARRAYS_KEY])
    trained = trained_names(reply)
    parts = []
    for name in layout.names():
        if name == CLIP_COUNTER:
            continue
        shape = layout.shape_of(name, space)
        if name not in local or name not in sent or tuple(local[name].shape) != shape:
            raise ProtocolError("wrong-length", f"the update lacks {name!r} of shape {shape}")
        delta = local[name].double() - sent[name].double()
        if trained is not None and name not in trained:
            delta = torch.zeros_like(delta)
        parts.append(delta.numpy().ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def _collect_setup(
    config: ConfigRecord, context: Context
) -> tuple[ClientRound, CoordinateSpace, dict[int, Layout], RingSpec]:
    """Take in the neighbours' shares; read the coordinate space, layouts and ring."""
    state = _load(context, "collect", _round_id(config))
    senders = config_ints(config, "from")
    blobs = config_blobs(config, "ciphertexts", len(senders))
    state.receive_shares(dict(zip(senders, blobs, strict=True)))
    _save(context, state)
    space = CoordinateSpace.from_bytes(config_bytes(config, "space"))
    ids, which = config_ints(config, "layout-ids"), config_ints(config, "layout-of")
    distinct = [
        Layout.from_bytes(blob, space) for blob in config_blobs(config, "layouts", len(set(which)))
    ]
    if len(which) != len(ids) or any(not 0 <= i < len(distinct) for i in which):
        raise ProtocolError("malformed", "layout-of must index the distinct layouts, one per id")
    layouts = {node: distinct[i] for node, i in zip(ids, which, strict=True)}
    if context.node_id not in layouts or any(n not in layouts for n in state.shares):
        raise ProtocolError("malformed", "the collect stage lacks layouts of this node or peers")
    ring = RingSpec(
        config_int(config, "bits"),
        config_float(config, "clip"),
        config_int(config, "max-weight"),
        config_int(config, "ring-bits"),
    )
    return state, space, layouts, ring


def _collect(msg: Message, context: Context, call_next: Handler, seed: int) -> Message:
    config = msg.content.config_records[SECAGG_KEY]
    state, space, layouts, ring = _collect_setup(config, context)
    sent = arrays_to_state(msg.content.array_records[ARRAYS_KEY])
    msg.content = RecordDict({k: v for k, v in msg.content.items() if k != SECAGG_KEY})
    reply = call_next(msg, context)
    if reply.has_error() or ARRAYS_KEY not in reply.content.array_records:
        return reply  # an error or a decline: this node drops out of the round
    rng = np.random.default_rng(
        derive_seed(seed, config_int(config, "server-round"), _partition(context))
    )
    vector = _update_vector(sent, reply.content, layouts[context.node_id], space)
    levels, clipped = ring.quantize(vector, rng)
    weight = ring.weight(int(metric_value(reply.content, "num-examples")))
    summed = np.append(levels * weight, clipped)  # the clip count is summed, never sent alone
    flat = {layout: layout.flat(space) for layout in set(layouts.values())}
    positions = {n: flat[layout] for n, layout in layouts.items()}  # one array per layout
    masked = state.mask(summed, positions[context.node_id], positions, space.size)
    content = RecordDict({k: v for k, v in reply.content.items() if k != ARRAYS_KEY})
    content[MASKED_KEY] = ConfigRecord({"vector": pack(ring.reduce(masked), ring.ring_bits)})
    content[SECAGG_KEY] = ConfigRecord(
        {
            "stage": "collect",
            "node-id": context.node_id,
            "weight": weight,
            "refused": list(state.refused),
        }
    )
    reply.content = content
    return reply


_QUERY_STAGES = {"advertise", "share-keys", "unmask"}


def secagg_mod(seed: int, keys: ClientKeys, min_neighbours: int = 2) -> Mod:
    """A Flower mod taking part in secure aggregation with the device's enrolled identity.

    Parameters
    ----------
    seed : the run seed; the stochastic rounding of updates derives from it.
    keys : the devices' keys (the identity of partition p signs its round keys).
    min_neighbours : the fewest neighbours this node shares its seeds with; fewer would let
        a server that isolates the node recover them.
    """

    def mod(msg: Message, context: Context, call_next: Handler) -> Message:
        kind = message_kind(msg)
        config = msg.content.config_records.get(SECAGG_KEY) if not msg.has_error() else None
        if kind == MessageType.QUERY and config is not None:
            stage = str(config.get("stage"))
            if stage not in _QUERY_STAGES:
                raise ProtocolError("unknown-stage", f"secagg stage {stage!r} is not a query stage")
            round_id = _round_id(config)
            if stage == "advertise":
                answer = _advertise(context, keys, round_id, min_neighbours)
            elif stage == "share-keys":
                answer = _share_keys(config, context, round_id)
            else:
                answer = _unmask(config, context, round_id)
            answer["stage"], answer["node-id"] = stage, context.node_id
            return Message(RecordDict({SECAGG_KEY: answer}), reply_to=msg)
        if kind != MessageType.TRAIN or msg.has_error():
            return call_next(msg, context)
        if config is None or config.get("stage") != "collect":
            raise ProtocolError(
                "not-secure",
                "a train message without secure-aggregation instructions: this "
                "client sends updates only masked; wrap the server's strategy with "
                "wrappers=[secagg] (strategies.secagg.SecureAggregation)",
            )
        return _collect(msg, context, call_next, seed)

    return mod
