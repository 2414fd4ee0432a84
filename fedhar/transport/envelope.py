"""Sealed envelopes: every model update travels encrypted and signed end to end.

Uplink (device -> server, ``seal`` / ``open_envelope``): the device makes an ephemeral X25519
key per message, agrees a secret with the server's X25519 key, derives an AEAD key with
HKDF-SHA256 (random salt; info = protocol label, AEAD name, both public keys), encrypts with
AES-256-GCM or ChaCha20-Poly1305 under a random 96-bit nonce, and signs the whole envelope with
its Ed25519 identity. Downlink (server -> device, ``seal_for_device`` / ``open_from_server``)
is the mirror image: encrypted to the device's X25519 key, signed with the server's Ed25519 key.
Envelopes are randomised by design; only the opened payload is deterministic.

Wire format, big-endian, never pickle::

    magic "FHEV" | version u8 | aead u8 | message type u8 | run-id length u8
    | format version u16 | round u32 | node id u64 | ephemeral key 32 | salt 16 | nonce 12
    | ciphertext length u32 | run id (UTF-8) | ciphertext (payload + 16-byte tag) | signature 64

The header (everything before the ciphertext) is the AEAD associated data, so the run, round,
node, message type, format version, algorithm and ephemeral key are all bound to the payload.
Opening checks structure and policy first, then the signature, then the context and replays,
and decrypts last. Every failure raises ``EnvelopeRejected`` with a stable ``reason``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedhar.transport.keys import (
    DeviceIdentity,
    ServerKeyPair,
    parse_ed25519_public_key,
    parse_x25519_public_key,
)

MAGIC = b"FHEV"
WIRE_VERSION = 1
PROTOCOL_LABEL = b"fedhar/envelope/v1"
SALT_BYTES = 16
NONCE_BYTES = 12  # 96-bit AEAD nonce, random per message
TAG_BYTES = 16
SIGNATURE_BYTES = 64
MAX_RUN_ID_BYTES = 255  # run id length is one byte on the wire
MAX_PAYLOAD_BYTES = 2**32 - 1 - TAG_BYTES  # ciphertext length is a u32 on the wire
_FIXED = struct.Struct(">4sBBBBHIQ32s16s12sI")
HEADER_BYTES = _FIXED.size  # 86 bytes, before the run id

AEADS: dict[str, tuple[int, type[AESGCM] | type[ChaCha20Poly1305]]] = {
    "aes-256-gcm": (1, AESGCM),
    "chacha20-poly1305": (2, ChaCha20Poly1305),
}
_AEAD_NAMES = {code: name for name, (code, _) in AEADS.items()}
UPLINK_TYPES = frozenset({"train-reply"})  # device -> server, signed by the device
DOWNLINK_TYPES = frozenset({"global-model"})  # server -> device, signed by the server
MESSAGE_TYPES = {"train-reply": 1, "global-model": 2}
_MESSAGE_NAMES = {code: name for name, code in MESSAGE_TYPES.items()}


class RejectReason(StrEnum):
    """Stable reason codes carried by ``EnvelopeRejected``."""

    MALFORMED = "malformed"  # bad magic, unknown message type, trailing bytes, bad run id
    TRUNCATED = "truncated"  # shorter than its declared structure
    OVERSIZE = "oversize"  # blob or declared payload above the policy limit
    UNSUPPORTED_VERSION = "unsupported-version"  # envelope wire version not understood
    AEAD_NOT_ALLOWED = "aead-not-allowed"  # algorithm unknown or outside the policy
    FORMAT_TOO_OLD = "format-version-too-old"  # payload format below the policy minimum
    UNKNOWN_SIGNER = "unknown-signer"  # no public key registered for the sender
    BAD_SIGNER_KEY = "bad-signer-key"  # the registered public key is malformed
    BAD_SIGNATURE = "bad-signature"  # wrong key or any modified byte
    WRONG_DIRECTION = "wrong-direction"  # an uplink type on the downlink or the reverse
    CONTEXT_MISMATCH = "context-mismatch"  # another run, round, node, type or format
    REPLAY = "replay"  # this exact envelope was opened before
    BAD_EPHEMERAL_KEY = "bad-ephemeral-key"  # ephemeral key is a low-order point
    DECRYPTION_FAILED = "decryption-failed"  # AEAD tag did not verify


class EnvelopeRejected(Exception):
    """An envelope failed a check; ``reason`` is a ``RejectReason`` code, ``detail`` says why."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ReplayGuard:
    """Remembers the ids (SHA-256 of the signed body) of opened envelopes, per run.

    At most ``max_per_run`` ids are kept per run, oldest dropped first; an envelope old
    enough to be forgotten still fails the round check of its context.
    """

    def __init__(self, max_per_run: int = 65_536) -> None:
        if max_per_run < 1:
            raise ValueError(f"max_per_run must be positive, got {max_per_run}")
        self.max_per_run = max_per_run
        self._seen: dict[str, OrderedDict[bytes, None]] = {}
        self._lock = threading.Lock()

    def claim(self, run_id: str, envelope_id: bytes) -> bool:
        """Record ``envelope_id`` for ``run_id``; False if it was recorded before."""
        with self._lock:
            seen = self._seen.setdefault(run_id, OrderedDict())
            if envelope_id in seen:
                return False
            seen[envelope_id] = None
            if len(seen) > self.max_per_run:
                seen.popitem(last=False)
            return True


@dataclass(frozen=True)
class EnvelopeContext:
    """What an envelope is for; bound into the associated data and compared on opening."""

    run_id: str
    round: int
    node_id: int
    message_type: str  # "train-reply" (uplink) or "global-model" (downlink)
    format_version: int  # version of the payload encoding inside the envelope

    def __post_init__(self) -> None:
        run_id = self.run_id.encode() if isinstance(self.run_id, str) else b""
        if not 0 < len(run_id) <= MAX_RUN_ID_BYTES:
            raise ValueError(f"run_id must be 1..{MAX_RUN_ID_BYTES} UTF-8 bytes: {self.run_id!r}")
        _check_range("round", self.round, 32)
        _check_range("node_id", self.node_id, 64)
        _check_range("format_version", self.format_version, 16)
        if self.message_type not in MESSAGE_TYPES:
            raise ValueError(
                f"unknown message_type {self.message_type!r}; valid: {sorted(MESSAGE_TYPES)}"
            )


@dataclass(frozen=True)
class EnvelopePolicy:
    """What a receiver accepts. Lists from a config become frozensets."""

    allowed_aeads: frozenset[str] = field(default_factory=lambda: frozenset(AEADS))
    min_format_version: int = 1
    max_payload_bytes: int = 16 * 2**20  # 13x the largest update the models produce (1.2 MB)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_aeads", frozenset(self.allowed_aeads))
        unknown = self.allowed_aeads - set(AEADS)
        if unknown or not self.allowed_aeads:
            raise ValueError(f"allowed_aeads must name some of {sorted(AEADS)}, got {unknown}")
        _check_range("min_format_version", self.min_format_version, 16)
        if not 0 < self.max_payload_bytes <= MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes must lie in [1, {MAX_PAYLOAD_BYTES}]")


@dataclass(frozen=True)
class EnvelopeHeader:
    """The signed, authenticated header of an envelope (all of it is associated data)."""

    aead: str
    context: EnvelopeContext
    ephemeral_key: bytes  # raw X25519 public key, fresh per message
    salt: bytes
    nonce: bytes
    ciphertext_bytes: int  # payload + tag

    @property
    def size(self) -> int:
        """Header length on the wire, run id included."""
        return HEADER_BYTES + len(self.context.run_id.encode())

    def pack(self) -> bytes:
        """The header's wire bytes."""
        run_id = self.context.run_id.encode()
        fixed = _FIXED.pack(
            MAGIC, WIRE_VERSION, AEADS[self.aead][0], MESSAGE_TYPES[self.context.message_type],
            len(run_id), self.context.format_version, self.context.round, self.context.node_id,
            self.ephemeral_key, self.salt, self.nonce, self.ciphertext_bytes,
        )  # fmt: skip
        return fixed + run_id


def _check_range(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise ValueError(f"{name} must be an int in [0, 2**{bits}), got {value!r}")


def read_header(blob: bytes) -> EnvelopeHeader:
    """Parse an envelope's header; structural problems -> ``EnvelopeRejected``."""
    if len(blob) < HEADER_BYTES:
        raise EnvelopeRejected(RejectReason.TRUNCATED, f"{len(blob)} bytes, header needs more")
    (magic, version, aead_code, type_code, run_id_len, format_version, rnd, node_id,
     ephemeral, salt, nonce, ct_len) = _FIXED.unpack_from(blob)  # fmt: skip
    if magic != MAGIC:
        raise EnvelopeRejected(RejectReason.MALFORMED, f"magic {magic!r}, expected {MAGIC!r}")
    if version != WIRE_VERSION:
        raise EnvelopeRejected(RejectReason.UNSUPPORTED_VERSION, f"wire version {version}")
    if aead_code not in _AEAD_NAMES:
        raise EnvelopeRejected(RejectReason.AEAD_NOT_ALLOWED, f"unknown aead id {aead_code}")
    if type_code not in _MESSAGE_NAMES:
        raise EnvelopeRejected(RejectReason.MALFORMED, f"unknown message type id {type_code}")
    if len(blob) < HEADER_BYTES + run_id_len:
        raise EnvelopeRejected(RejectReason.TRUNCATED, "blob ends inside the run id")
    try:
        run_id = bytes(blob[HEADER_BYTES : HEADER_BYTES + run_id_len]).decode()
        context = EnvelopeContext(run_id, rnd, node_id, _MESSAGE_NAMES[type_code], format_version)
    except ValueError as error:  # UnicodeDecodeError is a ValueError
        raise EnvelopeRejected(RejectReason.MALFORMED, f"bad run id: {error}") from None
    return EnvelopeHeader(_AEAD_NAMES[aead_code], context, ephemeral, salt, nonce, ct_len)


def _derive_key(shared: bytes, header: EnvelopeHeader, recipient_key: bytes) -> bytes:
    info = PROTOCOL_LABEL + b"/" + header.aead.encode() + header.ephemeral_key + recipient_key
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=info).derive(shared)


def _seal(
    payload: bytes,
    context: EnvelopeContext,
    recipient_key: bytes,
    signer: ServerKeyPair | DeviceIdentity,
    aead: str,
    direction: frozenset[str],
) -> bytes:
    if aead not in AEADS:
        raise ValueError(f"unknown aead {aead!r}; valid: {sorted(AEADS)}")
    if context.message_type not in direction:
        raise ValueError(f"message_type {context.message_type!r} goes the other way; use one of "
                         f"{sorted(direction)} here")  # fmt: skip
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    recipient = parse_x25519_public_key(recipient_key, "recipient public key")
    ephemeral = X25519PrivateKey.generate()
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        raise ValueError("recipient public key is a low-order point; it cannot be used") from None
    header = EnvelopeHeader(
        aead, context, ephemeral.public_key().public_bytes_raw(), os.urandom(SALT_BYTES),
        os.urandom(NONCE_BYTES), len(payload) + TAG_BYTES,
    )  # fmt: skip
    header_bytes = header.pack()
    key = _derive_key(shared, header, bytes(recipient_key))
    body = header_bytes + AEADS[aead][1](key).encrypt(header.nonce, bytes(payload), header_bytes)
    return body + signer.sign(body)


def _open(
    blob: bytes,
    expected: EnvelopeContext,
    recipient: ServerKeyPair | DeviceIdentity,
    signer_key: bytes | None,
    policy: EnvelopePolicy,
    replay_guard: ReplayGuard,
    direction: frozenset[str],
) -> bytes:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise EnvelopeRejected(RejectReason.MALFORMED, f"expected bytes, got {type(blob)}")
    blob = bytes(blob)
    limit = HEADER_BYTES + MAX_RUN_ID_BYTES + policy.max_payload_bytes + TAG_BYTES
    if len(blob) > limit + SIGNATURE_BYTES:
        raise EnvelopeRejected(RejectReason.OVERSIZE, f"blob of {len(blob)} bytes")
    header = read_header(blob)
    if header.aead not in policy.allowed_aeads:
        raise EnvelopeRejected(RejectReason.AEAD_NOT_ALLOWED, f"{header.aead} not in policy")
    if header.context.format_version < policy.min_format_version:
        raise EnvelopeRejected(
            RejectReason.FORMAT_TOO_OLD,
            f"format {header.context.format_version} < minimum {policy.min_format_version}",
        )
    if header.ciphertext_bytes < TAG_BYTES:
        raise EnvelopeRejected(RejectReason.MALFORMED, "ciphertext shorter than its tag")
    if header.ciphertext_bytes - TAG_BYTES > policy.max_payload_bytes:
        raise EnvelopeRejected(
            RejectReason.OVERSIZE, f"declared payload of {header.ciphertext_bytes - TAG_BYTES}"
        )
    body_end = header.size + header.ciphertext_bytes
    if len(blob) < body_end + SIGNATURE_BYTES:
        raise EnvelopeRejected(RejectReason.TRUNCATED, f"{len(blob)} < {body_end + 64} bytes")
    if len(blob) > body_end + SIGNATURE_BYTES:
        raise EnvelopeRejected(RejectReason.MALFORMED, "trailing bytes after the signature")
    if signer_key is None:
        raise EnvelopeRejected(RejectReason.UNKNOWN_SIGNER, "no public key for the sender")
    try:
        verifier = parse_ed25519_public_key(signer_key, "signer public key")
    except ValueError as error:
        raise EnvelopeRejected(RejectReason.BAD_SIGNER_KEY, str(error)) from None
    body = blob[:body_end]
    try:
        verifier.verify(blob[body_end:], body)
    except InvalidSignature:
        raise EnvelopeRejected(RejectReason.BAD_SIGNATURE, "signature does not verify") from None
    if header.context.message_type not in direction:
        raise EnvelopeRejected(RejectReason.WRONG_DIRECTION, header.context.message_type)
    if header.context != expected:
        diffs = [f"{name}={getattr(header.context, name)!r} (expected {value!r})"
                 for name, value in vars(expected).items()
                 if getattr(header.context, name) != value]  # fmt: skip
        raise EnvelopeRejected(RejectReason.CONTEXT_MISMATCH, ", ".join(diffs))
    if not replay_guard.claim(expected.run_id, hashlib.sha256(body).digest()):
        raise EnvelopeRejected(RejectReason.REPLAY, "envelope was already opened")
    try:
        shared = recipient.exchange(parse_x25519_public_key(header.ephemeral_key))
    except ValueError:
        raise EnvelopeRejected(RejectReason.BAD_EPHEMERAL_KEY, "low-order point") from None
    key = _derive_key(shared, header, recipient.public_bytes())
    ciphertext = blob[header.size : body_end]
    try:
        return AEADS[header.aead][1](key).decrypt(header.nonce, ciphertext, blob[: header.size])
    except InvalidTag:
        raise EnvelopeRejected(RejectReason.DECRYPTION_FAILED, "AEAD tag mismatch") from None


def seal(
    payload: bytes,
    context: EnvelopeContext,
    server_public_key: bytes,
    identity: DeviceIdentity,
    aead: str = "aes-256-gcm",
) -> bytes:
    """Uplink: encrypt ``payload`` to the server and sign it with the device's identity."""
    return _seal(payload, context, server_public_key, identity, aead, UPLINK_TYPES)


def open_envelope(
    blob: bytes,
    expected: EnvelopeContext,
    server_keys: ServerKeyPair,
    device_public_key: bytes | None,
    policy: EnvelopePolicy,
    replay_guard: ReplayGuard,
) -> bytes:
    """Uplink: verify and decrypt a device's envelope; any failure -> ``EnvelopeRejected``.

    ``device_public_key`` is the sender's registered Ed25519 key (``KeyRegistry.signing_key``);
    None means the node is unknown and the envelope is rejected.
    """
    return _open(blob, expected, server_keys, device_public_key, policy, replay_guard, UPLINK_TYPES)


def seal_for_device(
    payload: bytes,
    context: EnvelopeContext,
    device_public_key: bytes,
    server_keys: ServerKeyPair,
    aead: str = "aes-256-gcm",
) -> bytes:
    """Downlink: encrypt ``payload`` to a device's X25519 key and sign it as the server."""
    return _seal(payload, context, device_public_key, server_keys, aead, DOWNLINK_TYPES)


def open_from_server(
    blob: bytes,
    expected: EnvelopeContext,
    identity: DeviceIdentity,
    server_signing_key: bytes,
    policy: EnvelopePolicy,
    replay_guard: ReplayGuard,
) -> bytes:
    """Downlink: verify and decrypt the server's envelope; any failure -> ``EnvelopeRejected``."""
    return _open(blob, expected, identity, server_signing_key, policy, replay_guard, DOWNLINK_TYPES)
