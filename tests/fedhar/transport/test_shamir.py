"""Shamir sharing: any threshold shares recover the secret, fewer or bad ones do not."""

from __future__ import annotations

import itertools
import os

import pytest

from fedhar.transport.shamir import PRIME, SHARE_BYTES, ShamirError, combine_shares, split_secret

IDS = [3, 17, 2**40 + 5, 99, 1234567]


def test_every_threshold_subset_recovers_the_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, IDS, threshold=3)
    assert all(len(s) == SHARE_BYTES for s in shares.values())
    for subset in itertools.combinations(IDS, 3):
        assert combine_shares({i: shares[i] for i in subset}, 3) == secret
    assert combine_shares(shares, 3) == secret  # more than needed is fine


def test_fewer_shares_than_the_threshold_are_refused() -> None:
    shares = split_secret(os.urandom(32), IDS, threshold=4)
    with pytest.raises(ShamirError, match="3 shares cannot recover"):
        combine_shares({i: shares[i] for i in IDS[:3]}, 4)


def test_threshold_minus_one_shares_say_nothing_about_the_secret() -> None:
    """With t - 1 shares fixed, every secret is equally consistent: a share set from one secret
    interpolates, with a made-up t-th share, to any other secret we like."""
    ids = IDS[:3]
    shares = split_secret(b"\x01" * 32, ids, threshold=3)
    known = {i: shares[i] for i in ids[:2]}
    # Lagrange: the t-th share that makes the secret equal to `target` always exists.
    target = int.from_bytes(b"\x02" * 32, "big")
    xs = ids
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num, den = num * xj % PRIME, den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    partial = (
        sum(w * int.from_bytes(known[x], "big") for w, x in zip(weights[:2], xs[:2], strict=True))
        % PRIME
    )
    forged = (target - partial) * pow(weights[2], -1, PRIME) % PRIME
    known[xs[2]] = forged.to_bytes(SHARE_BYTES, "big")
    assert combine_shares(known, 3) == b"\x02" * 32


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s[:-1], "not 66 bytes"),
        (lambda s: b"\xff" * SHARE_BYTES, "not a field element"),
    ],
)
def test_malformed_shares_are_refused(mutate, message: str) -> None:
    shares = split_secret(os.urandom(32), IDS, threshold=2)
    shares[IDS[0]] = mutate(shares[IDS[0]])
    with pytest.raises(ShamirError, match=message):
        combine_shares({i: shares[i] for i in IDS[:2]}, 2)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ShamirError, match="32 bytes"):
        split_secret(b"short", IDS, 2)
    with pytest.raises(ShamirError, match="distinct"):
        split_secret(os.urandom(32), [1, 1, 2], 2)
    with pytest.raises(ShamirError, match="threshold 6"):
        split_secret(os.urandom(32), IDS, 6)
    with pytest.raises(ShamirError, match=r"\[1, 2\^64\)"):
        split_secret(os.urandom(32), [0, 1], 2)
