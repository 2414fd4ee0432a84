"""Key material for update envelopes: server and device key pairs, the device key registry.

The server holds one ``ServerKeyPair`` per run: an X25519 key that devices encrypt updates to
and an Ed25519 key that signs the global model on the way down. Every device holds a
``DeviceIdentity``: an Ed25519 key that signs its updates and an X25519 key that the server
encrypts the global model to. The server keeps the devices' public halves in a ``KeyRegistry``.

Keys come from the OS random generator (``generate``; ``fedhar.transport.keystore`` keeps a
run's keys on disk), or, when asked for, from a seed through HKDF-SHA256. Seeded keys are only
as secret as the seed, which every run's ``config.yaml`` shows: anyone can recompute them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32  # raw X25519 and Ed25519 keys, public and private
FINGERPRINT_BYTES = 16  # a fingerprint is the first 16 bytes of SHA-256, as 32 hex characters

# Ed25519 encodings of small-order points, sign bit cleared (the libsodium blocklist). A
# signature "verifies" under such a key for a large share of all messages with R = identity,
# S = 0, so a registry must never accept one.
_SMALL_ORDER_ED25519 = frozenset(
    bytes.fromhex(h)
    for h in (
        "00" * 32,  # order 4
        "01" + "00" * 31,  # the identity
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "ec" + "ff" * 30 + "7f",  # p - 1, order 2
        "ed" + "ff" * 30 + "7f",  # p (non-canonical 0), order 4
        "ee" + "ff" * 30 + "7f",  # p + 1 (non-canonical 1), the identity
    )
)


def fingerprint(raw: bytes) -> str:
    """Hex of the first 16 bytes of SHA-256 over ``raw``: a short, stable name for a key."""
    return hashlib.sha256(raw).digest()[:FINGERPRINT_BYTES].hex()


def parse_ed25519_public_key(raw: bytes, role: str = "device signing key") -> Ed25519PublicKey:
    """Load a raw 32-byte Ed25519 public key; wrong length or a small-order point -> ValueError."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        size = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
        raise ValueError(
            f"{role} must be {KEY_BYTES} raw bytes, got {size}; "
            "pass the output of public_bytes()/signing_public_bytes()"
        )
    masked = bytes(raw[:-1]) + bytes([raw[-1] & 0x7F])
    if masked in _SMALL_ORDER_ED25519:
        raise ValueError(f"{role} is a small-order point and would accept forged signatures")
    return Ed25519PublicKey.from_public_bytes(bytes(raw))


def parse_x25519_public_key(raw: bytes, role: str = "exchange key") -> X25519PublicKey:
    """Load a raw 32-byte X25519 public key; wrong length -> ValueError.

    Low-order points are caught when the key is used: the exchange then raises ValueError.
    """
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        size = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
        raise ValueError(f"{role} must be {KEY_BYTES} raw bytes, got {size}")
    return X25519PublicKey.from_public_bytes(bytes(raw))


def derive_key_bytes(seed: int | bytes, label: str) -> bytes:
    """32 private-key bytes from ``seed`` and a purpose ``label`` with HKDF-SHA256.

    An int seed must lie in [0, 2**128); it is encoded as 16 big-endian bytes.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | bytes):
        raise TypeError(f"seed must be an int or bytes, got {type(seed).__name__}")
    if isinstance(seed, int):
        if not 0 <= seed < 2**128:
            raise ValueError(f"int seed must lie in [0, 2**128), got {seed}")
        seed = seed.to_bytes(16, "big")
    if not seed:
        raise ValueError("bytes seed must not be empty")
    info = b"fedhar/keys/v1/" + label.encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
    return hkdf.derive(seed)


def _raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@dataclass(frozen=True)
class KeyPairs:
    """An Ed25519 signing key and an X25519 exchange key held together."""

    signing_key: Ed25519PrivateKey
    exchange_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> Self:
        """Fresh random keys."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def _derive(cls, seed: int | bytes, label: str) -> Self:
        return cls(
            Ed25519PrivateKey.from_private_bytes(derive_key_bytes(seed, f"{label}/ed25519")),
            X25519PrivateKey.from_private_bytes(derive_key_bytes(seed, f"{label}/x25519")),
        )

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Self:
        """Keys from ``private_bytes()`` output (64 bytes); any other length -> ValueError."""
        if len(raw) != 2 * KEY_BYTES:
            raise ValueError(f"private keys must be {2 * KEY_BYTES} bytes, got {len(raw)}")
        return cls(
            Ed25519PrivateKey.from_private_bytes(raw[:KEY_BYTES]),
            X25519PrivateKey.from_private_bytes(raw[KEY_BYTES:]),
        )

    def private_bytes(self) -> bytes:
        """The raw Ed25519 then X25519 private key: 64 secret bytes."""
        return self.signing_key.private_bytes_raw() + self.exchange_key.private_bytes_raw()

    def public_bytes(self) -> bytes:
        """Raw 32-byte X25519 public key: peers encrypt to it."""
        return _raw_public(self.exchange_key)

    def signing_public_bytes(self) -> bytes:
        """Raw 32-byte Ed25519 public key: peers verify signatures with it."""
        return _raw_public(self.signing_key)

    def sign(self, data: bytes) -> bytes:
        """64-byte Ed25519 signature over ``data``."""
        return self.signing_key.sign(data)

    def exchange(self, peer_public: X25519PublicKey) -> bytes:
        """X25519 shared secret with ``peer_public``; a low-order peer key -> ValueError."""
        return self.exchange_key.exchange(peer_public)


@dataclass(frozen=True)
class ServerKeyPair(KeyPairs):
    """The server's keys for one run: X25519 to receive updates, Ed25519 to sign the model."""

    @classmethod
    def from_seed(cls, seed: int | bytes) -> ServerKeyPair:
        """Reproducible keys for simulation: same seed, same keys."""
        return cls._derive(seed, "server")

    def fingerprint(self) -> str:
        """32 hex characters: SHA-256 over the X25519 then the Ed25519 public key, truncated."""
        return fingerprint(self.public_bytes() + self.signing_public_bytes())


@dataclass(frozen=True)
class DevicePublicKeys:
    """The public half of a ``DeviceIdentity``: what the server stores per device."""

    signing: bytes  # Ed25519, verifies the device's updates
    exchange: bytes  # X25519, receives the global model

    def __post_init__(self) -> None:
        parse_ed25519_public_key(self.signing, "device signing key")
        parse_x25519_public_key(self.exchange, "device exchange key")


@dataclass(frozen=True)
class DeviceIdentity(KeyPairs):
    """A device's keys: Ed25519 signs its updates, X25519 receives the global model."""

    @classmethod
    def from_seed(cls, seed: int | bytes, device_id: int | str) -> DeviceIdentity:
        """Reproducible keys for device ``device_id`` of a fleet built from ``seed``."""
        return cls._derive(seed, f"device/{device_id}")

    def public_keys(self) -> DevicePublicKeys:
        """Both public keys, for the server's registry."""
        return DevicePublicKeys(self.signing_public_bytes(), self.public_bytes())

    def fingerprint(self) -> str:
        """32 hex characters: SHA-256 over the Ed25519 public key, truncated."""
        return fingerprint(self.signing_public_bytes())


class KeyRegistry:
    """node_id -> the device's public keys, as the server holds them.

    A node keeps its first key: registering a different key for a known node is refused, so a
    key cannot be swapped silently in the middle of a run.
    """

    def __init__(self) -> None:
        self._keys: dict[int, DevicePublicKeys] = {}

    def register(self, node_id: int, keys: DevicePublicKeys) -> None:
        """Store ``keys`` for ``node_id``; a node that already holds other keys -> ValueError."""
        known = self._keys.get(node_id)
        if known is not None and known != keys:
            raise ValueError(
                f"node {node_id} already holds signing key {fingerprint(known.signing)}; "
                "build a new registry to rotate device keys"
            )
        self._keys[node_id] = keys

    def signing_key(self, node_id: int) -> bytes | None:
        """Raw Ed25519 key of ``node_id``, or None for an unknown node."""
        keys = self._keys.get(node_id)
        return None if keys is None else keys.signing

    def exchange_key(self, node_id: int) -> bytes | None:
        """Raw X25519 key of ``node_id``, or None for an unknown node."""
        keys = self._keys.get(node_id)
        return None if keys is None else keys.exchange

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)
