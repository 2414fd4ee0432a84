"""Client mod that seals every train reply to the server (and optionally opens the model).

Pairs with ``strategies.encryption.EncryptedTransport``. On a train message the mod reads the
server's keys from the message config, lets the handler train, and replaces the reply's payload
with one signed, encrypted envelope (``fedhar.transport.envelope.seal``) under the device's
identity, ``DeviceIdentity.from_seed(run seed, partition id)``: a simulated device derives its
own private keys from the seed, so runs are reproducible; the server knows only the public
keys the node sent at enrollment.

What is sealed: the whole reply content, serialized with Flower's protobuf record format
(arrays keep their dtype, shape and npy bytes, so integer buffers round-trip exactly; never
pickle). What stays in clear, next to the envelope: every record except the payload records
``arrays`` and ``compressed`` - the ``metrics``, ``client`` and ``trained`` records - so that
tracking can count and name replies without keys. The server only accepts a reply whose clear
records equal their sealed copies, so they are readable but not forgeable. A ``transport``
MetricRecord with the seal time rides in clear too; it is telemetry, dropped by the server.
Declines and error replies carry no update and pass through unsealed.

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
from fedhar.wire import (
    CONFIG_KEY,
    PAYLOAD_FORMAT,
    PAYLOAD_FORMAT_KEY,
    PAYLOAD_KEYS,
    RUN_ID_KEY,
    SEALED_KEY,
    SEALED_MODEL_KEY,
    SERVER_FINGERPRINT_KEY,
    SERVER_PUBLIC_KEY_KEY,
    SERVER_SIGNING_KEY_KEY,
    TRANSPORT_KEY,
    config_int,
    message_kind,
    record_from_bytes,
    record_to_bytes,
)

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


def _server_keys(config: ConfigRecord) -> tuple[bytes, bytes]:
    """The server's (X25519, Ed25519) public keys, checked against the sent fingerprint."""
    needed = (SERVER_PUBLIC_KEY_KEY, SERVER_SIGNING_KEY_KEY, SERVER_FINGERPRINT_KEY, RUN_ID_KEY,
              PAYLOAD_FORMAT_KEY)  # fmt: skip
    missing = [k for k in needed if k not in config]
    if missing:
        raise ValueError(
            f"train config lacks {missing}: the server must wrap its strategy in "
            "strategies.encryption.EncryptedTransport when clients use encryption_mod"
        )
    public, signing = config[SERVER_PUBLIC_KEY_KEY], config[SERVER_SIGNING_KEY_KEY]
    if not isinstance(public, bytes) or not isinstance(signing, bytes):
        raise ValueError(f"{SERVER_PUBLIC_KEY_KEY} and {SERVER_SIGNING_KEY_KEY} must be bytes")
    if fingerprint(public + signing) != config[SERVER_FINGERPRINT_KEY]:
        raise ValueError(f"server keys do not match {SERVER_FINGERPRINT_KEY}; refusing to seal")
    return public, signing


def _identity(seed: int, context: Context) -> DeviceIdentity:
    if "partition-id" not in context.node_config:
        raise ValueError("node_config lacks partition-id; the device identity is keyed by it")
    return DeviceIdentity.from_seed(seed, int(context.node_config["partition-id"]))


def _open_model(
    msg: Message, context: Context, identity: DeviceIdentity, guards: dict[str, ReplayGuard]
) -> float:
    """Replace the sealed global model by its records in place; returns the seconds taken."""
    config = msg.content.config_records[CONFIG_KEY]
    _, signing = _server_keys(config)
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
    aead: str,
    transport: dict[str, int | float | list[int] | list[float]],
) -> Message:
    """Replace the reply's payload records by one envelope over the whole content."""
    payload = [k for k in PAYLOAD_KEYS if k in reply.content]
    if not payload:  # a decline: nothing to protect
        return reply
    public, _ = _server_keys(config)
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


def encryption_mod(seed: int, aead: str = "aes-256-gcm", downlink: bool = False) -> Mod:
    """A Flower mod sealing train replies with the device identity of ``(seed, partition id)``.

    Parameters
    ----------
    seed : the run seed the fleet's device identities are derived from.
    aead : "aes-256-gcm" or "chacha20-poly1305"; the server must allow it.
    downlink : expect the global model sealed to this device and open it before training.
    """
    if aead not in AEADS:
        raise ValueError(f"unknown aead {aead!r}; valid: {sorted(AEADS)}")
    guards: dict[str, ReplayGuard] = {}  # per run id; filled in the worker (locks don't pickle)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
            ) -> Message:  # fmt: skip
        kind = message_kind(msg)
        if kind not in (MessageType.TRAIN, MessageType.EVALUATE) or msg.has_error():
            return call_next(msg, context)
        identity = _identity(seed, context)
        config = msg.content.config_records[CONFIG_KEY]
        sealed_model = SEALED_MODEL_KEY in msg.content
        if sealed_model != downlink:
            raise ValueError(
                f"the global model arrived {'sealed' if sealed_model else 'in clear'} but this "
                f"client has downlink={downlink}; set the same downlink on server and client"
            )
        open_seconds = _open_model(msg, context, identity, guards) if downlink else 0.0
        reply = call_next(msg, context)
        if kind != MessageType.TRAIN or reply.has_error():
            return reply
        transport: dict[str, int | float | list[int] | list[float]] = (
            {"open-seconds": open_seconds} if downlink else {}
        )
        return _seal_reply(reply, config, context, identity, aead, transport)

    return mod
