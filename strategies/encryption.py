"""A strategy wrapper that opens and verifies every sealed update before aggregation.

Pairs with ``clients.encryption.encryption_mod``. The server holds one X25519/Ed25519 key pair
per run (``RunInfo.key_store``: OS-random and kept in the run directory unless
``transport.seeded_keys``) and sends its public keys in every train and evaluate message's
config; devices accept them only if they match the fingerprint pinned in their run config.
Each reply's
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

Every train and evaluate reply also carries the device's signature over its clear records
(scores, declines, telemetry), bound to run, round, node and kind (`fedhar.transport.signed`).
``screen_reply`` checks it as the reply arrives, through the run's grid
(`strategies.grid_proxy.screening`), before tracking or any strategy reads the reply: a reply
that is unsigned, forged or replayed becomes that client's failure (``encryption/screened/
<code>``). Everything is bound to the run's ``transport_id``, which changes each time the
run starts, so a reply captured before an interruption (in the interrupted round too) is
refused after it; within one start, the replay guard refuses a second copy.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
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
from fedhar.transport.signed import ReplyContext, verify
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
    content_nbytes,
    decline_reason,
    message_kind,
    record_from_bytes,
    record_to_bytes,
)
from strategies.run_info import RunInfo
from strategies.wrapper import StrategyWrapper

logger = logging.getLogger("fedhar")

_NUMERIC_KINDS = "biuf"  # bool, int, uint, float arrays only
BN_STATS_QUERY = f"{MessageType.QUERY}.{BN_STATS_ACTION}"
SCREENED_ERROR_CODE = 801  # error code of a reply turned into a failure by ``screen_reply``


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


def _signed_kind(reply: Message) -> str | None:
    """What a device signs this reply as: train, evaluate or static-BatchNorm sums (they
    become the global model's statistics); None for kinds it does not sign."""
    if reply.metadata.message_type == BN_STATS_QUERY:
        return BN_STATS_QUERY
    kind = message_kind(reply)
    return kind if kind in (MessageType.TRAIN, MessageType.EVALUATE) else None


def _unsigned(reply: Message) -> Message:
    content = RecordDict({k: v for k, v in reply.content.items() if k != SIGNATURE_KEY})
    return Message(metadata=reply.metadata, content=content)  # type: ignore[call-overload]


class EncryptedTransport(StrategyWrapper):
    """Wraps ``strategy``; only verified, decrypted updates reach it.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy (any, partial-model ones included).
    run : RunInfo
        The run: its id binds envelopes, its key store holds the server keys, its key
        registry the devices' public keys, registered at enrollment.
    aead_allowed : Sequence[str]
        Algorithms accepted on the uplink; the first also seals the downlink.
    max_payload_bytes : int
        Larger envelopes are rejected as ``oversize`` before any cryptography runs.
    min_format_version : int
        Envelopes with an older payload format are rejected (downgrade).
    downlink : bool
        Also seal the global model to each device (train and evaluate messages).
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
    ) -> None:
        if min_format_version > PAYLOAD_FORMAT:
            raise ValueError(
                f"min_format_version={min_format_version} but this server reads payload format "
                f"{PAYLOAD_FORMAT}; lower min_format_version"
            )
        if run.key_store is None:
            raise ValueError("the run has no key store (RunInfo.key_store); compose the run "
                             "with experiments.server.prepare_run")  # fmt: skip
        super().__init__(strategy)
        self.run = run
        allowed = [str(name) for name in aead_allowed]
        self.policy = EnvelopePolicy(frozenset(allowed), min_format_version, max_payload_bytes)
        self.downlink_aead = allowed[0]  # the policy checked the list is valid and not empty
        self.downlink = downlink
        self.keys = run.key_store.server()
        self.guard = ReplayGuard()  # one per run: an envelope opens once
        self._round = 0  # the round whose replies are arriving
        self._passed: set[int] = set()  # ids of the replies screen_reply let through
        logger.info("run %s: server key fingerprint %s", run.run_id, self.keys.fingerprint())

    def summary(self) -> None:
        log(logging.INFO, "\t├──> Encrypted transport, server key %s, AEADs %s, downlink %s",
            self.keys.fingerprint(), sorted(self.policy.allowed_aeads), self.downlink)  # fmt: skip
        self.strategy.summary()

    def _key_config(self, server_round: int) -> dict[str, bytes | str | int]:
        return {
            SERVER_PUBLIC_KEY_KEY: self.keys.public_bytes(),
            SERVER_SIGNING_KEY_KEY: self.keys.signing_public_bytes(),
            RUN_ID_KEY: self.run.transport_id,
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
        context = EnvelopeContext(self.run.transport_id, server_round, node_id, "global-model",
                                  PAYLOAD_FORMAT)  # fmt: skip
        envelope = seal_for_device(
            record_to_bytes(model), context, device_key, self.keys, self.downlink_aead
        )
        self.count("downlink-seal-seconds", time.perf_counter() - started)
        return ConfigRecord({"envelope": envelope})

    def screen_reply(self, reply: Message) -> Message:
        """``reply`` without its signature if the signature verifies, else an error reply.

        Checks train and evaluate replies and static-BatchNorm answers; errors and other
        kinds (secure aggregation's stages sign their own) pass unchanged.
        """
        kind = _signed_kind(reply)
        if kind is None or reply.has_error():
            return reply
        try:
            self._check_signature(reply, kind)
        except PayloadRejected as screened:
            self.count(f"screened/{screened.reason}")
            node_id, code, detail = reply.metadata.src_node_id, screened.reason, screened.detail
            logger.warning("encryption screened out the %s reply of node %d (%s): %s", kind,
                           node_id, code, detail)  # fmt: skip
            error = Error(SCREENED_ERROR_CODE, f"encryption rejected {code}: {detail}")
            return Message(metadata=reply.metadata, error=error)  # type: ignore[call-overload]
        passed = _unsigned(reply)
        self._passed.add(id(passed))
        return passed

    def _checked(self, replies: Iterable[Message]) -> list[Message]:
        """``replies`` with those the grid did not screen (a stack started on a plain grid,
        without `strategies.grid_proxy.screening`) checked here: a bad one is rejected."""
        kept: list[Message] = []
        for reply in replies:
            if reply.has_error() or id(reply) in self._passed:
                kept.append(reply)
                continue
            try:
                self._check_signature(reply, _signed_kind(reply) or message_kind(reply))
            except PayloadRejected as rejection:
                self.reject(reply.metadata.src_node_id, rejection.reason, rejection.detail)
                continue
            kept.append(_unsigned(reply))
        return kept

    def _check_signature(self, reply: Message, kind: str) -> None:
        node_id = reply.metadata.src_node_id
        record = reply.content.config_records.get(SIGNATURE_KEY)
        signature = None if record is None else record.get("signature")
        if not isinstance(signature, bytes):
            raise PayloadRejected("unsigned", "the reply carries no device signature")
        body = canonical_bytes(reply.content, leave_out=(SIGNATURE_KEY,))
        statement = ReplyContext(self.run.transport_id, self._round, node_id, kind).statement(body)
        try:
            verify(self.run.keys.signing_key(node_id), statement, signature)
        except ValueError as error:
            raise PayloadRejected("bad-signature", str(error)) from None
        if not self.guard.claim(
            self.run.transport_id, hashlib.sha256(b"reply" + signature).digest()
        ):
            raise PayloadRejected("replay", "this signed reply was received before")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.start_round()
        self._round, self._passed = server_round, set()
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
            self.run.transport_id, server_round, node_id, "train-reply", PAYLOAD_FORMAT
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
        for reply in self._checked(replies):
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
        self._round, self._passed = server_round, set()
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return [self._prepare(m, server_round) for m in messages]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, self._checked(replies))
