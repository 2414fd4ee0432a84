"""Detached Ed25519 statements: a device's proof of key possession, and its signed replies.

**Enrollment.** The server sends each node a fresh random challenge; the node answers with
its public keys and a signature, under its signing key, over the challenge, the run's
transport id, its node id, its whole enrollment record (partition, user, device, widest
width, window count) and both public keys. A node that cannot sign does not hold the
private key it claims, and is left out of the fleet.

**Replies.** With encrypted transport, every reply a device sends in clear (evaluation
scores, declines, and the clear records and telemetry next to a sealed update) carries a
signature over its canonical bytes, bound to the run, round, node and message kind. The
server drops a reply whose signature does not verify under the key the node enrolled with.

Every field is length-prefixed, and each statement starts with its own label, so no
statement of one kind can be read as another.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from fedhar.transport.keys import DevicePublicKeys, parse_ed25519_public_key

CHALLENGE_BYTES = 32
_ENROLL_LABEL = b"fedhar/enroll/v1"
_REPLY_LABEL = b"fedhar/signed-reply/v1"


def _fields(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _ids(*values: int) -> bytes:
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64 for v in values):
        raise ValueError(f"ids must be ints in [0, 2**64), got {values}")
    return struct.pack(f">{len(values)}Q", *values)


def enrollment_statement(
    challenge: bytes, run_id: str, node_id: int, claims: bytes, keys: DevicePublicKeys
) -> bytes:
    """What a node signs to enroll: the server's challenge, its node id, everything it claims
    to be (``claims``: the canonical bytes of its enrollment record: partition, user, device,
    widest width) and its public keys."""
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise ValueError(f"challenge must be {CHALLENGE_BYTES} bytes")
    return _fields(
        _ENROLL_LABEL, challenge, run_id.encode(), _ids(node_id), claims, keys.signing,
        keys.exchange,
    )  # fmt: skip


@dataclass(frozen=True)
class ReplyContext:
    """What a signed reply answers: run, round, node and message kind ("train", "evaluate")."""

    run_id: str
    server_round: int
    node_id: int
    kind: str

    def statement(self, body: bytes) -> bytes:
        """The bytes signed for a reply whose canonical content is ``body``."""
        ids = _ids(self.server_round, self.node_id)
        digest = hashlib.sha256(body).digest()
        return _fields(_REPLY_LABEL, self.run_id.encode(), ids, self.kind.encode(), digest)


def verify(signing_key: bytes | None, statement: bytes, signature: object) -> None:
    """ValueError unless ``signature`` is ``signing_key``'s signature over ``statement``."""
    if signing_key is None:
        raise ValueError("no enrolled signing key for this node")
    if not isinstance(signature, bytes):
        raise ValueError(f"signature must be bytes, got {type(signature).__name__}")
    try:
        parse_ed25519_public_key(signing_key).verify(signature, statement)
    except InvalidSignature:
        raise ValueError("signature does not verify under the enrolled key") from None
