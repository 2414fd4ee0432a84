"""Client mod that seals every train reply to the server, signs every reply it sends in
clear, and optionally opens the global model.

Pairs with ``strategies.encryption.EncryptedTransport``. On a train message the mod reads the
server's keys from the message config and accepts them only if they match the fingerprint
pinned in its own run config (``ClientKeys.server_fingerprint``); it lets the handler train,
and replaces the reply's payload with one signed, encrypted envelope
(``fedhar.transport.envelope.seal``) under the device's identity, its key in the run's key
store (``fedhar.transport.keystore``). The server knows only the public keys the node sent at
enrollment.

What is sealed: the whole reply content, serialized with Flower's protobuf record format
(arrays keep their dtype, shape and npy bytes, so integer buffers round-trip exactly; never
pickle). What stays in clear, next to the envelope: every record except the payload records
``arrays`` and ``compressed`` - the ``metrics``, ``client`` and ``trained`` records - so that
tracking can count and name replies without keys. The server only accepts a reply whose clear
records equal their sealed copies, so they are readable but not forgeable. A ``transport``
MetricRecord with the seal time rides in clear too; it is telemetry. Declines carry no update
and are not sealed. Every train and evaluate reply (scores, declines, clear records and
telemetry included) is then signed as a whole (``fedhar.transport.signed``), bound to run,
round, node and kind; error replies carry nothing to sign. So are static-BatchNorm answers
(``query.bn_stats``), bound to the round the node last trained in.

Downlink (``downlink=True``): the server seals the global model (its ``arrays`` and, with
compression, ``compressed`` records) to the device's X25519 key and the mod opens it before
the handler runs; a model arriving in clear is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedhar.transport.envelope import (
    AEADS,
    EnvelopeContext,
    EnvelopePolicy,
    ReplayGuard,
    open_from_server,
    seal,
)
from fedhar.transport.keys import DeviceIdentity, fingerprint
from fedhar.transport.keystore import ClientKeys
from fedhar.transport.signed import ReplyContext
from fedhar.wire import (
    BN_STATS_ACTION,
    CONFIG_KEY,
    PAYLOAD_FORMAT,
    PAYLOAD_FORMAT_KEY,
    PAYLOAD_KEYS,
    RUN_ID_KEY,
    SEALED_KEY,
    SEALED_MODEL_KEY,
    SERVER_PUBLIC_KEY_KEY,
    SERVER_SIGNING_KEY_KEY,
    SIGNATURE_KEY,
    TRANSPORT_KEY,
    canonical_bytes,
    config_int,
    message_kind,
    record_from_bytes,
    record_to_bytes,
)

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]
BN_STATS_QUERY = f"{MessageType.QUERY}.{BN_STATS_ACTION}"
BINDING_KEY = "transport-round"  # context.state: transport id and round of its last training


def _server_keys(config: ConfigRecord, pinned: str) -> tuple[bytes, bytes]:
    """The server's (X25519, Ed25519) public keys, checked against the pinned fingerprint."""
    needed = (SERVER_PUBLIC_KEY_KEY, SERVER_SIGNING_KEY_KEY, RUN_ID_KEY, PAYLOAD_FORMAT_KEY)
    missing = [k for k in needed if k not in config]
    if missing:
        raise ValueError(
            f"config lacks {missing}: the server must wrap its strategy in "
            "strategies.encryption.EncryptedTransport when clients use encryption_mod"
        )
    public, signing = config[SERVER_PUBLIC_KEY_KEY], config[SERVER_SIGNING_KEY_KEY]
    if not isinstance(public, bytes) or not isinstance(signing, bytes):
        raise ValueError(f"{SERVER_PUBLIC_KEY_KEY} and {SERVER_SIGNING_KEY_KEY} must be bytes")
    if fingerprint(public + signing) != pinned:
        raise ValueError(
            f"the server's keys (fingerprint {fingerprint(public + signing)}) are not the "
            f"pinned server {pinned}; refusing to talk to it"
        )
    return public, signing


def _identity(keys: ClientKeys, context: Context) -> DeviceIdentity:
    if "partition-id" not in context.node_config:
        raise ValueError("node_config lacks partition-id; the device identity is keyed by it")
    return keys.store.device(int(context.node_config["partition-id"]))


def _open_model(
    msg: Message,
    context: Context,
    identity: DeviceIdentity,
    signing: bytes,
    guards: dict[str, ReplayGuard],
) -> float:
    """Replace the sealed global model by its records in place; returns the seconds taken."""
    config = msg.content.config_records[CONFIG_KEY]
    started = time.perf_counter()
    expected = EnvelopeContext(
        str(config[RUN_ID_KEY]),
        config_int(config, "server-round"),
        context.node_id,
        "global-model",
        config_int(config, PAYLOAD_FORMAT_KEY),
    )
    blob = msg.content.config_records[SEALED_MODEL_KEY].get("envelope")
    if not isinstance(blob, bytes):
        raise ValueError(f"'{SEALED_MODEL_KEY}' record lacks its envelope bytes")
    guard = guards.setdefault(expected.run_id, ReplayGuard())
    opened = record_from_bytes(open_from_server(blob, expected, identity, signing,
                                                EnvelopePolicy(), guard))  # fmt: skip
    if not opened or any(k not in PAYLOAD_KEYS for k in opened):
        raise ValueError(f"sealed model must hold only payload records {PAYLOAD_KEYS}")
    content = RecordDict({k: v for k, v in msg.content.items() if k != SEALED_MODEL_KEY})
    for key, record in opened.items():
        content[key] = record
    msg.content = content
    return time.perf_counter() - started


def _seal_reply(
    reply: Message,
    config: ConfigRecord,
    context: Context,
    identity: DeviceIdentity,
    public: bytes,
    aead: str,
    transport: dict[str, int | float | list[int] | list[float]],
) -> Message:
    """Replace the reply's payload records by one envelope over the whole content."""
    payload = [k for k in PAYLOAD_KEYS if k in reply.content]
    if not payload:  # a decline: nothing to seal
        return reply
    version = config_int(config, PAYLOAD_FORMAT_KEY)
    if version != PAYLOAD_FORMAT:
        raise ValueError(f"server asks for payload format {version}; this client writes "
                         f"{PAYLOAD_FORMAT}: update the client")  # fmt: skip
    started = time.perf_counter()
    envelope_context = EnvelopeContext(
        str(config[RUN_ID_KEY]),
        config_int(config, "server-round"),
        context.node_id,
        "train-reply",
        version,
    )
    envelope = seal(record_to_bytes(reply.content), envelope_context, public, identity, aead)
    transport = {**transport, "seal-seconds": time.perf_counter() - started}
    content = RecordDict({k: v for k, v in reply.content.items() if k not in PAYLOAD_KEYS})
    content[SEALED_KEY] = ConfigRecord({"envelope": envelope, "inner": payload[0]})
    content[TRANSPORT_KEY] = MetricRecord(transport)
    reply.content = content
    return reply


def _sign_bn_sums(reply: Message, context: Context, identity: DeviceIdentity) -> Message:
    """Sign a static-BatchNorm answer, bound to the round the node last trained in (the
    server asks a round's contributors right after they trained)."""
    binding = context.state.config_records.get(BINDING_KEY)
    if reply.has_error() or binding is None:
        return reply  # unsigned: the server drops it
    return _sign_reply(reply, binding, context, identity, BN_STATS_QUERY)


def _sign_reply(
    reply: Message, config: ConfigRecord, context: Context, identity: DeviceIdentity, kind: str
) -> Message:
    """Add the device's signature over the reply's whole content, bound to its round."""
    bound = ReplyContext(
        str(config[RUN_ID_KEY]), config_int(config, "server-round"), context.node_id, kind
    )
    signature = identity.sign(bound.statement(canonical_bytes(reply.content)))
    content = RecordDict(dict(reply.content.items()))
    content[SIGNATURE_KEY] = ConfigRecord({"signature": signature})
    reply.content = content
    return reply


def encryption_mod(keys: ClientKeys, aead: str = "aes-256-gcm", downlink: bool = False) -> Mod:
    """A Flower mod sealing train replies, and signing all replies, with the device's keys.

    Parameters
    ----------
    keys : the devices' keys and the server fingerprint to pin (composed with the run).
    aead : "aes-256-gcm" or "chacha20-poly1305"; the server must allow it.
    downlink : expect the global model sealed to this device and open it before training.
    """
    if aead not in AEADS:
        raise ValueError(f"unknown aead {aead!r}; valid: {sorted(AEADS)}")
    guards: dict[str, ReplayGuard] = {}  # per run id; filled in the worker (locks don't pickle)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
            ) -> Message:  # fmt: skip
        kind = message_kind(msg)
        if msg.metadata.message_type == BN_STATS_QUERY and not msg.has_error():
            return _sign_bn_sums(call_next(msg, context), context, _identity(keys, context))
        if kind not in (MessageType.TRAIN, MessageType.EVALUATE) or msg.has_error():
            return call_next(msg, context)
        identity = _identity(keys, context)
        config = msg.content.config_records[CONFIG_KEY]
        public, signing = _server_keys(config, keys.server_fingerprint)
        sealed_model = SEALED_MODEL_KEY in msg.content
        if sealed_model != downlink:
            raise ValueError(
                f"the global model arrived {'sealed' if sealed_model else 'in clear'} but this "
                f"client has downlink={downlink}; set the same downlink on server and client"
            )
        open_seconds = _open_model(msg, context, identity, signing, guards) if downlink else 0.0
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        if kind == MessageType.TRAIN:
            context.state[BINDING_KEY] = ConfigRecord(
                {
                    RUN_ID_KEY: str(config[RUN_ID_KEY]),
                    "server-round": config_int(config, "server-round"),
                }
            )
            transport: dict[str, int | float | list[int] | list[float]] = (
                {"open-seconds": open_seconds} if downlink else {}
            )
            reply = _seal_reply(reply, config, context, identity, public, aead, transport)
        return _sign_reply(reply, config, context, identity, kind)

    return mod
