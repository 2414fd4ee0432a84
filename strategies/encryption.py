"""A strategy wrapper that opens and verifies every sealed update before aggregation.

Pairs with ``clients.encryption.encryption_mod``. The server holds one X25519/Ed25519 key pair
per run and sends its public keys and fingerprint in every train message's config. Each reply's
envelope (``fedhar.transport.envelope``) is verified against the signing key the node enrolled
with (the run's key registry, ``RunInfo.keys``, filled at enrollment), bound to this run,
round and node, checked against one replay guard for the run, decrypted, and parsed back into
the exact records the client's handler produced. The downlink is sealed to the device's
enrolled X25519 key.

A reply that fails any check is rejected under its reason code (``encryption/rejected/<code>``),
logged and dropped: the round goes on, nothing is raised, and the inner strategy never sees
it. Besides the envelope's own codes (``fedhar.transport.envelope.RejectReason``) the wrapper
rejects with ``not-sealed`` (no envelope, or a decline that carries payload records in clear),
``bad-payload`` (the opened bytes are not well-formed records) and ``clear-mismatch`` (a
record left in clear differs from its sealed copy, e.g. a forged ``num-examples``).

Server keys derived from the run seed make runs reproducible and let a resumed run keep its
key, but they are only as secret as the seed: fine for simulation, wrong for a deployment,
where ``seeded_keys=False`` draws them from the OS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.transport.envelope import (
    EnvelopeContext,
    EnvelopePolicy,
    EnvelopeRejected,
    ReplayGuard,
    open_envelope,
    seal_for_device,
)
from fedhar.transport.keys import ServerKeyPair
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
    content_nbytes,
    decline_reason,
    record_from_bytes,
    record_to_bytes,
)
from strategies.run_info import RunInfo
from strategies.wrapper import StrategyWrapper

logger = logging.getLogger("fedhar")

_NUMERIC_KINDS = "biuf"  # bool, int, uint, float arrays only


class PayloadRejected(Exception):
    """An opened envelope whose content cannot be what the client's handler produced."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_payload(data: bytes) -> RecordDict:
    """Opened envelope bytes -> records; anything malformed -> ``PayloadRejected``."""
    try:
        content = record_from_bytes(data)
        for record in content.array_records.values():
            for name, array in record.items():
                values = array.numpy()  # np.load with allow_pickle=False
                if values.dtype.kind not in _NUMERIC_KINDS or (
                    list(values.shape) != list(array.shape) or str(values.dtype) != array.dtype
                ):
                    raise ValueError(f"array {name!r} does not match its declared dtype/shape")
    except Exception as error:  # protobuf, npy and record parsing of untrusted bytes
        raise PayloadRejected("bad-payload", f"{type(error).__name__}: {error}") from None
    return content


def restore_reply(clear: RecordDict, opened: RecordDict) -> RecordDict:
    """The handler's original content, after checking the clear records against the sealed."""
    sealed = clear.config_records.get(SEALED_KEY)
    inner = sealed.get("inner") if sealed is not None else None
    if inner not in PAYLOAD_KEYS or inner not in opened:
        raise PayloadRejected("bad-payload", f"sealed payload lacks its inner record {inner!r}")
    for key in opened:
        if key not in PAYLOAD_KEYS and key not in clear:
            raise PayloadRejected("clear-mismatch", f"record {key!r} is missing in clear")
    for key, record in clear.items():
        if key in (SEALED_KEY, TRANSPORT_KEY):
            continue
        if key not in opened or opened[key] != record:
            raise PayloadRejected("clear-mismatch", f"clear record {key!r} differs from sealed")
    return opened


class EncryptedTransport(StrategyWrapper):
    """Wraps ``strategy``; only verified, decrypted updates reach it.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy (any, partial-model ones included).
    run : RunInfo
        The run: its id binds envelopes, its seed derives the server keys, its key registry
        holds the devices' public keys, registered at enrollment.
    aead_allowed : Sequence[str]
        Algorithms accepted on the uplink; the first also seals the downlink.
    max_payload_bytes : int
        Larger envelopes are rejected as ``oversize`` before any cryptography runs.
    min_format_version : int
        Envelopes with an older payload format are rejected (downgrade).
    downlink : bool
        Also seal the global model to each device (train and evaluate messages).
    seeded_keys : bool
        Derive the server keys from the run seed (reproducible) or draw them at random.
    """

    prefix = "encryption"
    stack_rank = 20  # opens sealed updates, then the codec inside it decodes them

    def __init__(
        self,
        strategy: Strategy,
        run: RunInfo,
        aead_allowed: Sequence[str] = ("aes-256-gcm", "chacha20-poly1305"),
        max_payload_bytes: int = 16 * 2**20,
        min_format_version: int = 1,
        downlink: bool = False,
        seeded_keys: bool = True,
    ) -> None:
        if min_format_version > PAYLOAD_FORMAT:
            raise ValueError(
                f"min_format_version={min_format_version} but this server reads payload format "
                f"{PAYLOAD_FORMAT}; lower min_format_version"
            )
        super().__init__(strategy)
        self.run = run
        allowed = [str(name) for name in aead_allowed]
        self.policy = EnvelopePolicy(frozenset(allowed), min_format_version, max_payload_bytes)
        self.downlink_aead = allowed[0]  # the policy checked the list is valid and not empty
        self.downlink = downlink
        self.keys = ServerKeyPair.from_seed(run.seed) if seeded_keys else ServerKeyPair.generate()
        self.guard = ReplayGuard()  # one per run: an envelope opens once
        logger.info("run %s: server key fingerprint %s", run.run_id, self.keys.fingerprint())

    def summary(self) -> None:
        log(logging.INFO, "\t├──> Encrypted transport, server key %s, AEADs %s, downlink %s",
            self.keys.fingerprint(), sorted(self.policy.allowed_aeads), self.downlink)  # fmt: skip
        self.strategy.summary()

    def _key_config(self, server_round: int) -> dict[str, bytes | str | int]:
        return {
            SERVER_PUBLIC_KEY_KEY: self.keys.public_bytes(),
            SERVER_SIGNING_KEY_KEY: self.keys.signing_public_bytes(),
            SERVER_FINGERPRINT_KEY: self.keys.fingerprint(),
            RUN_ID_KEY: self.run.run_id,
            PAYLOAD_FORMAT_KEY: PAYLOAD_FORMAT,
            "server-round": server_round,
        }

    def _prepare(self, message: Message, server_round: int) -> Message:
        """Add the key config and, for the downlink, seal the model to the message's node."""
        content = RecordDict(dict(message.content.items()))
        config = content.config_records.get(CONFIG_KEY, ConfigRecord())
        content[CONFIG_KEY] = ConfigRecord({**config, **self._key_config(server_round)})
        model = RecordDict({k: content[k] for k in PAYLOAD_KEYS if k in content})
        if self.downlink and model:
            for key in model:
                del content[key]
            node_id = message.metadata.dst_node_id
            content[SEALED_MODEL_KEY] = self._seal_model(model, node_id, server_round)
        message.content = content
        return message

    def _seal_model(self, model: RecordDict, node_id: int, server_round: int) -> ConfigRecord:
        started = time.perf_counter()
        device_key = self.run.keys.exchange_key(node_id)
        if device_key is None:
            raise ValueError(f"node {node_id} has no enrolled keys; cannot seal the model to it")
        context = EnvelopeContext(self.run.run_id, server_round, node_id, "global-model",
                                  PAYLOAD_FORMAT)  # fmt: skip
        envelope = seal_for_device(
            record_to_bytes(model), context, device_key, self.keys, self.downlink_aead
        )
        self.count("downlink-seal-seconds", time.perf_counter() - started)
        return ConfigRecord({"envelope": envelope})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.start_round()
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return [self._prepare(m, server_round) for m in messages]

    def _open(self, server_round: int, reply: Message) -> Message:
        sealed = reply.content.config_records.get(SEALED_KEY)
        envelope = None if sealed is None else sealed.get("envelope")
        if not isinstance(envelope, bytes):
            raise PayloadRejected("not-sealed", "reply carries no envelope")
        node_id = reply.metadata.src_node_id
        signer = self.run.keys.signing_key(node_id)
        expected = EnvelopeContext(
            self.run.run_id, server_round, node_id, "train-reply", PAYLOAD_FORMAT
        )
        payload = open_envelope(envelope, expected, self.keys, signer, self.policy, self.guard)
        content = restore_reply(reply.content, parse_payload(payload))
        self.count("envelope-bytes", len(envelope))
        overhead = len(envelope) - content_nbytes(
            RecordDict({k: content[k] for k in PAYLOAD_KEYS if k in content})
        )
        self.count("overhead-bytes", overhead)
        return Message(metadata=reply.metadata, content=content)  # type: ignore[call-overload]

    def _count_transport(self, reply: Message) -> None:
        record = reply.content.metric_records.get(TRANSPORT_KEY)
        for name in ("seal-seconds", "open-seconds"):
            value = None if record is None else record.get(name)
            if isinstance(value, float) and np.isfinite(value):
                self.count(f"client-{name}", value)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept: list[Message] = []
        for reply in replies:
            if reply.has_error():
                kept.append(reply)
                continue
            if decline_reason(reply.content) is not None:
                clear = [key for key in PAYLOAD_KEYS if key in reply.content]
                if clear:  # a decline carries no update: its clear arrays must not be aggregated
                    self.reject(reply.metadata.src_node_id, "not-sealed",
                                f"decline carries clear records {clear}")  # fmt: skip
                else:
                    kept.append(reply)
                continue
            started = time.perf_counter()
            try:
                kept.append(self._open(server_round, reply))
                self._count_transport(reply)
                self.accept()
            except (EnvelopeRejected, PayloadRejected) as rejection:
                self.reject(reply.metadata.src_node_id, str(rejection.reason), rejection.detail)
            self.count("server-open-seconds", time.perf_counter() - started)
        return self.strategy.aggregate_train(server_round, kept)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        if not self.downlink:
            return messages
        return [self._prepare(m, server_round) for m in messages]
