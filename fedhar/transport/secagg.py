"""Secure aggregation (Bonawitz et al. CCS 2017; SecAgg+ neighbour graphs, Bell et al. CCS 2020).

The server learns the sum of the clients' vectors and nothing else, even when clients drop out,
as long as at least ``threshold`` of each client's share holders answer. One round, per client u:

1. **Advertise**: fresh X25519 keys, ``c`` (encrypts shares) and ``s`` (agrees pairwise masks),
   and a hash committing to the self-mask seed ``b_u``, signed with the device's key.
2. **Share keys**: a 256-bit self-mask seed ``b_u``; Shamir shares of ``b_u`` and of ``s_u``'s
   private key go to u's neighbours (everyone, or a k-regular graph), each encrypted with
   AES-256-GCM under a key agreed from the ``c`` keys, so the server only forwards them.
3. **Masked input**: ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv)`` mod 2^r, the sign + for v > u;
   each pairwise mask covers the coordinates u and v both hold (`fedhar.transport.masking`).
4. **Unmask**: given who sent (active) and who did not (dropped), each client returns the
   ``b`` shares of active neighbours and the ``s`` shares of dropped ones, never both for
   one node; the server recovers the seeds, checks each against its commitment or public key
   (a wrong share is found by leaving one holder out at a time), and removes every mask left
   in the sum.

A share that does not decrypt at a client is refused: that client never masks with its sender,
says so, and the server drops the sender and leaves the pair out of recovery.

Private keys and seeds come from the OS (``os.urandom``): masks cancel exactly, so the sum,
and every figure of a run, does not depend on them. This module is arithmetic on bytes and
arrays; `strategies.secagg` and `clients.secagg` carry it in Flower messages.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedhar.transport.keys import parse_ed25519_public_key
from fedhar.transport.masking import SEED_BYTES, pair_mask, prg
from fedhar.transport.shamir import (
    SHARE_BYTES,
    ShamirError,
    combine_shares,
    is_share,
    split_secret,
)

NONCE_BYTES = 12
_SHARE_PLAIN = struct.Struct(f">QQ{SHARE_BYTES}s{SHARE_BYTES}s")  # from, to, b share, s share


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` names the rule, the text says more."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def round_context(run_id: str, server_round: int) -> bytes:
    """What every key of a round is bound to: the run and the round."""
    return b"fedhar/secagg/round/" + run_id.encode() + struct.pack(">Q", server_round)


def commitment(self_seed: bytes, context: bytes) -> bytes:
    """The hash a node signs at advertise time, binding it to its self-mask seed."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"fedhar/secagg/v1/self-seed/" + context + self_seed)
    return digest.finalize()


def advertised(
    context: bytes, node_id: int, c_public: bytes, s_public: bytes, seed_commitment: bytes
) -> bytes:
    """The bytes a node signs when it advertises its round keys and seed commitment."""
    return context + struct.pack(">Q", node_id) + c_public + s_public + seed_commitment


def verify_advertised(
    signing_key: bytes,
    signature: bytes,
    context: bytes,
    node_id: int,
    keys: tuple[bytes, bytes],
    seed_commitment: bytes,
) -> None:
    """Check a node's signature over its advertised round keys; ProtocolError if it fails."""
    try:
        parse_ed25519_public_key(signing_key).verify(
            signature, advertised(context, node_id, *keys, seed_commitment)
        )
    except (InvalidSignature, ValueError) as error:
        raise ProtocolError("bad-signature", f"advertised keys do not verify: {error!r}") from None


def threshold_for(holders: int, fraction: float) -> int:
    """Shares needed to recover a secret held by ``holders`` nodes: more than half, >= 2."""
    if not 0.5 < fraction <= 1.0:
        raise ValueError(
            f"threshold fraction {fraction} must lie in (0.5, 1]: at or below one "
            "half, a server could gather both shares of a node"
        )
    if holders < 2:
        raise ProtocolError(
            "too-few-holders",
            f"a secret held by {holders} node(s) would be revealed by its owner alone",
        )
    return min(holders, max(2, math.ceil(fraction * holders)))


def neighbour_graph(
    nodes: Sequence[int], degree: int | None, seed: int
) -> dict[int, tuple[int, ...]]:
    """Each node's neighbours: everyone (``degree`` None), or a random k-regular Harary graph.

    The graph places the nodes on a ring in a seeded random order and links each to its
    ``degree / 2`` nearest on either side (SecAgg+); ``degree`` is rounded up to even. When it
    reaches the cohort, the graph is complete.
    """
    ordered = sorted(nodes)
    if degree is not None and degree < 2:
        raise ValueError(f"secagg neighbours={degree} must be at least 2 (or null: everyone)")
    if degree is None or degree >= len(ordered) - 1:
        return {n: tuple(m for m in ordered if m != n) for n in ordered}
    half = math.ceil(degree / 2)
    ring = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    position = {n: i for i, n in enumerate(ring)}
    size = len(ring)
    return {
        n: tuple(
            sorted({ring[(position[n] + step) % size] for step in range(-half, half + 1) if step})
        )
        for n in ordered
    }


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(secret)


def _agree(private: bytes, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    """A 256-bit key from an X25519 agreement, bound to its purpose and the round."""
    if len(peer_public) != 32:
        raise ProtocolError("bad-key", f"a public key is 32 bytes, got {len(peer_public)}")
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as error:  # low-order point
        raise ProtocolError("bad-key", str(error)) from None
    return _hkdf(shared, b"fedhar/secagg/v1/" + purpose + b"/" + context)


def pair_seed(private: bytes, peer_public: bytes, context: bytes) -> bytes:
    """The pairwise mask seed of a pair: the same from either side."""
    return _agree(private, peer_public, b"pair-mask", context)


def _private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def mask_sign(owner: int, peer: int) -> int:
    """+1 if ``owner`` adds the pair's mask, -1 if it subtracts it."""
    return 1 if owner < peer else -1


@dataclass
class ClientRound:
    """One client's part in one round: its keys, its self-mask seed and the shares it holds.

    ``context`` binds every derived key to the run and round. Between messages the round lives
    in the node's state (`to_state` / `from_state`).
    """

    node_id: int
    context: bytes
    c_key: bytes = field(default_factory=_private_key)
    s_key: bytes = field(default_factory=_private_key)
    self_seed: bytes = field(default_factory=lambda: os.urandom(SEED_BYTES))
    min_neighbours: int = 2  # fewer would let a server isolate this node
    neighbours: tuple[int, ...] = ()
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # node -> (c pk, s pk)
    threshold: int = 0  # shares needed for this node's secrets, fixed when they go out
    shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # owner -> (b, s) share
    refused: tuple[int, ...] = ()  # neighbours whose shares did not decrypt: never masked with
    revealed: bool = False

    def public_keys(self) -> tuple[bytes, bytes]:
        return public_of(self.c_key), public_of(self.s_key)

    def seed_commitment(self) -> bytes:
        return commitment(self.self_seed, self.context)

    def share_keys(
        self, roster: Mapping[int, tuple[bytes, bytes]], neighbours: Sequence[int], fraction: float
    ) -> dict[int, bytes]:
        """Shares of ``b`` and of the ``s`` private key for each neighbour, encrypted to it."""
        if len(set(neighbours)) < self.min_neighbours:
            raise ProtocolError(
                "too-few-neighbours",
                f"{len(set(neighbours))} neighbours, fewer than the {self.min_neighbours} "
                "this node requires",
            )
        if self.node_id in neighbours:
            raise ProtocolError("bad-graph", "a node cannot be its own neighbour")
        missing = [n for n in (*neighbours, self.node_id) if n not in roster]
        if missing:
            raise ProtocolError("bad-graph", f"neighbours {missing[:3]} have no advertised keys")
        if roster[self.node_id] != self.public_keys():
            raise ProtocolError("bad-roster", "the roster misstates this node's own keys")
        self.neighbours = tuple(sorted(set(neighbours)))
        self.roster = {n: roster[n] for n in (*self.neighbours, self.node_id)}
        holders = [*self.neighbours, self.node_id]
        self.threshold = threshold_for(len(holders), fraction)
        b_shares = split_secret(self.self_seed, holders, self.threshold)
        s_shares = split_secret(self.s_key, holders, self.threshold)
        self.shares = {self.node_id: (b_shares[self.node_id], s_shares[self.node_id])}
        out = {}
        for peer in self.neighbours:
            key = _agree(self.c_key, roster[peer][0], b"share-key", self.context)
            plain = _SHARE_PLAIN.pack(self.node_id, peer, b_shares[peer], s_shares[peer])
            nonce = os.urandom(NONCE_BYTES)
            out[peer] = nonce + AESGCM(key).encrypt(nonce, plain, self.context)
        return out

    def receive_shares(self, ciphertexts: Mapping[int, bytes]) -> list[int]:
        """Keep the neighbours' shares; returns the senders whose share was refused.

        A share that does not decrypt to a share from its sender for this node is refused:
        this node never masks with that sender. A share from a non-neighbour fails the stage.
        """
        refused = []
        for owner, blob in sorted(ciphertexts.items()):
            if owner not in self.neighbours:
                raise ProtocolError(
                    "not-a-neighbour", f"a share came from node {owner}, not a neighbour"
                )
            key = _agree(self.c_key, self.roster[owner][0], b"share-key", self.context)
            try:
                plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self.context)
                sender, recipient, b_share, s_share = _SHARE_PLAIN.unpack(plain)
            except (InvalidTag, struct.error, ValueError):
                refused.append(owner)
                continue
            if (sender, recipient) != (owner, self.node_id):
                refused.append(owner)
                continue
            self.shares[owner] = (b_share, s_share)
        self.refused = tuple(refused)
        return refused

    def mask(
        self,
        vector: np.ndarray,
        own: np.ndarray,
        layouts: Mapping[int, np.ndarray],
        space_size: int,
    ) -> np.ndarray:
        """The masked vector (uint64, mod 2^64) over this client's coordinates ``own``.

        Masks pair with every neighbour whose shares arrived and decrypted (those the server
        will either see send or recover); ``layouts`` holds their global positions.
        """
        if len(vector) != len(own):
            raise ProtocolError(
                "wrong-length", f"vector of {len(vector)} for {len(own)} coordinates"
            )
        masked = np.asarray(vector).astype(np.int64).view(np.uint64) + prg(self.self_seed, len(own))
        for peer in sorted(self.shares):
            if peer == self.node_id:
                continue
            seed = pair_seed(self.s_key, self.roster[peer][1], self.context)
            words = pair_mask(seed, own, layouts[peer], space_size)
            masked = masked + words if mask_sign(self.node_id, peer) > 0 else masked - words
        return masked

    def reveal(
        self, active: Sequence[int], dropped: Sequence[int]
    ) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """(b shares of active neighbours, s shares of dropped ones); refused if unsafe."""
        if self.revealed:
            raise ProtocolError("already-revealed", "this round's shares were already revealed")
        both = sorted(set(active) & set(dropped))
        if both:
            raise ProtocolError(
                "active-and-dropped",
                f"nodes {both[:3]} are listed as active and dropped: revealing both shares "
                "would unmask them",
            )
        if self.node_id in dropped:
            raise ProtocolError("self-dropped", "this node sent its input; it cannot be dropped")
        if self.node_id not in active:
            raise ProtocolError("not-active", "this node is not listed among the senders")
        holders = [*self.neighbours, self.node_id]
        senders = [n for n in holders if n in set(active)]
        if len(senders) < self.threshold:
            raise ProtocolError(
                "below-threshold",
                f"only {len(senders)} of {len(holders)} share holders sent, threshold "
                f"{self.threshold}",
            )
        self.revealed = True
        b_out = {n: self.shares[n][0] for n in active if n in self.shares}
        s_out = {n: self.shares[n][1] for n in dropped if n in self.shares}
        return b_out, s_out

    def to_state(self) -> dict[str, bytes | int | bool | list[int] | list[bytes]]:
        """The round as flat values (a Flower ConfigRecord holds them)."""
        ids, roster_ids = sorted(self.shares), sorted(self.roster)
        return {
            "node-id": self.node_id,
            "context": self.context,
            "c-key": self.c_key,
            "s-key": self.s_key,
            "self-seed": self.self_seed,
            "min-neighbours": self.min_neighbours,
            "neighbours": list(self.neighbours),
            "roster-ids": roster_ids,
            "roster-c": [self.roster[n][0] for n in roster_ids],
            "roster-s": [self.roster[n][1] for n in roster_ids],
            "threshold": self.threshold,
            "share-ids": ids,
            "b-shares": [self.shares[n][0] for n in ids],
            "s-shares": [self.shares[n][1] for n in ids],
            "refused": list(self.refused),
            "revealed": self.revealed,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> ClientRound:
        def blob(key: str) -> bytes:
            value = state[key]
            if not isinstance(value, bytes):
                raise ProtocolError("bad-state", f"secagg state {key!r} is not bytes")
            return value

        def listed(key: str) -> list[Any]:
            value = state[key]
            if not isinstance(value, list):
                raise ProtocolError("bad-state", f"secagg state {key!r} is not a list")
            return value

        roster = zip(listed("roster-ids"), listed("roster-c"), listed("roster-s"), strict=True)
        shares = zip(listed("share-ids"), listed("b-shares"), listed("s-shares"), strict=True)
        return cls(
            node_id=int(state["node-id"]),  # type: ignore[call-overload]
            context=blob("context"),
            c_key=blob("c-key"),
            s_key=blob("s-key"),
            self_seed=blob("self-seed"),
            min_neighbours=int(state["min-neighbours"]),  # type: ignore[call-overload]
            neighbours=tuple(int(n) for n in listed("neighbours")),
            roster={int(n): (c, s) for n, c, s in roster},
            threshold=int(state["threshold"]),  # type: ignore[call-overload]
            shares={int(n): (b, s) for n, b, s in shares},
            refused=tuple(int(n) for n in listed("refused")),
            revealed=bool(state["revealed"]),
        )


@dataclass(frozen=True)
class Revealed:
    """The shares the server gathered in the unmask stage, by owner and holder."""

    self_seed: Mapping[int, Mapping[int, bytes]]  # active owner -> holder -> b share
    pair_key: Mapping[int, Mapping[int, bytes]]  # dropped owner -> holder -> s share


@dataclass(frozen=True)
class RoundKeys:
    """What the server knows of the round's keys and graph."""

    neighbours: Mapping[int, Sequence[int]]  # among the nodes that shared keys
    mask_keys: Mapping[int, bytes]  # advertised s public keys
    commitments: Mapping[int, bytes]  # advertised self-seed commitments
    refused: Mapping[int, Sequence[int]]  # sender -> neighbours it refused (never masked with)
    fraction: float
    context: bytes


def _recover(owner: int, held: Mapping[int, bytes], threshold: int,
             valid: Callable[[bytes], bool], what: str) -> bytes:  # fmt: skip
    """A secret from ``held`` that ``valid`` accepts, leaving out one holder at a time if the
    lowest ``threshold`` shares give a wrong one; ProtocolError if none does."""
    good = {holder: share for holder, share in held.items() if is_share(share)}
    try:
        secret = combine_shares(good, threshold)
    except ShamirError as error:
        raise ProtocolError("below-threshold", f"{what} of node {owner}: {error}") from None
    if valid(secret):
        return secret
    for suspect in sorted(good):
        others = {h: v for h, v in good.items() if h != suspect}
        if len(others) >= threshold and valid(secret := combine_shares(others, threshold)):
            return secret
    raise ProtocolError(
        "bad-shares",
        f"no {threshold} of the {len(good)} shares of node "
        f"{owner}'s {what} recover it (more than one holder lied)",
    )


def recover_sum(
    masked: Mapping[int, np.ndarray],
    positions: Mapping[int, np.ndarray],
    keys: RoundKeys,
    revealed: Revealed,
    dropped: Sequence[int],
    space_size: int,
) -> np.ndarray:
    """The sum mod 2^64 of the senders' vectors, scattered onto the global coordinates.

    ``masked`` holds each sender's vector and ``positions`` its global coordinates (dropped
    nodes' too); ``dropped`` the nodes that shared keys but are not in the sum. Raises
    ProtocolError when a needed seed cannot be recovered.
    """
    total = np.zeros(space_size, dtype=np.uint64)

    def threshold(owner: int) -> int:
        return threshold_for(len(keys.neighbours[owner]) + 1, keys.fraction)

    def committed(owner: int) -> Callable[[bytes], bool]:
        return lambda seed: commitment(seed, keys.context) == keys.commitments[owner]

    def advertised_key(owner: int) -> Callable[[bytes], bool]:
        return lambda key: public_of(key) == keys.mask_keys[owner]

    for owner, vector in masked.items():
        held = revealed.self_seed.get(owner, {})
        seed = _recover(owner, held, threshold(owner), committed(owner), "self-mask seed")
        total[positions[owner]] += np.asarray(vector, dtype=np.uint64) - prg(seed, len(vector))
    for lost in dropped:
        owners = [o for o in masked if lost in keys.neighbours[o] and lost not in keys.refused[o]]
        if not owners:
            continue  # no sender masked with it: nothing to remove
        held = revealed.pair_key.get(lost, {})
        key = _recover(lost, held, threshold(lost), advertised_key(lost), "mask key")
        for owner in owners:
            seed = pair_seed(key, keys.mask_keys[owner], keys.context)
            words = pair_mask(seed, positions[owner], positions[lost], space_size)
            if mask_sign(owner, lost) > 0:
                total[positions[owner]] -= words
            else:
                total[positions[owner]] += words
    return total
