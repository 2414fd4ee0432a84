"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Secure aggregation shares each client's mask seeds this way (`fedhar.transport.secagg`): any
``threshold`` shares give the secret back, fewer reveal nothing about it. Share ids are the
holders' node ids (any distinct ints in [1, 2^64)); a share is 66 big-endian bytes.

Written here rather than taken from pycryptodome (already installed with Flower): its
``Shamir`` shares only 16-byte secrets and runs GF(2^128) in pure Python, 0.30 s to split
and 0.42 s to combine one 16-byte secret at 134 of 200 holders on this project's CI machine,
against about 3 ms here with Python's big integers.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache

PRIME = 2**521 - 1  # a Mersenne prime: every 32-byte secret is a field element
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)
MAX_SHARE_ID = 2**64


class ShamirError(ValueError):
    """Shares that cannot give a secret back: too few, malformed or inconsistent."""


def _check_ids(share_ids: Sequence[int]) -> None:
    if len(set(share_ids)) != len(share_ids):
        raise ShamirError("share ids must be distinct")
    bad = [i for i in share_ids if not 0 < i < MAX_SHARE_ID]
    if bad:
        raise ShamirError(f"share ids must lie in [1, 2^64), got {bad[:3]}")


def split_secret(secret: bytes, share_ids: Sequence[int], threshold: int) -> dict[int, bytes]:
    """One share per id of a random degree ``threshold - 1`` polynomial through ``secret``."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    _check_ids(share_ids)
    if not 1 <= threshold <= len(share_ids):
        raise ShamirError(f"threshold {threshold} must lie in [1, {len(share_ids)}] holders")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in share_ids:
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values at 0 for the points ``xs``: shared by every secret they hold."""
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def is_share(share: object) -> bool:
    """Whether ``share`` is a well-formed share: 66 bytes holding a field element."""
    return (
        isinstance(share, bytes)
        and len(share) == SHARE_BYTES
        and int.from_bytes(share, "big") < PRIME
    )


def combine_shares(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the ``threshold`` lowest ids are used)."""
    if len(shares) < threshold:
        raise ShamirError(
            f"{len(shares)} shares cannot recover a secret shared with threshold {threshold}"
        )
    xs = tuple(sorted(shares)[:threshold])
    _check_ids(xs)
    ys = []
    for x in xs:
        share = shares[x]
        if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
            raise ShamirError(f"share of id {x} is not {SHARE_BYTES} bytes")
        y = int.from_bytes(share, "big")
        if y >= PRIME:
            raise ShamirError(f"share of id {x} is not a field element")
        ys.append(y)
    secret = sum(w * y for w, y in zip(_lagrange_at_zero(xs), ys, strict=True)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ShamirError("the shares are inconsistent: they do not interpolate a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
