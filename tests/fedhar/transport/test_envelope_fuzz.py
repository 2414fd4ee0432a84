"""Property: a mutated envelope is never accepted, and only ever raises EnvelopeRejected."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedhar.transport.envelope import (
    EnvelopeContext,
    EnvelopePolicy,
    EnvelopeRejected,
    ReplayGuard,
    open_envelope,
    open_from_server,
    seal,
    seal_for_device,
)
from fedhar.transport.keys import DeviceIdentity, ServerKeyPair

SERVER = ServerKeyPair.from_seed(11)
DEVICE = DeviceIdentity.from_seed(11, device_id=5)
CTX = EnvelopeContext("fuzz-run", round=3, node_id=5, message_type="train-reply", format_version=2)
DOWN_CTX = dataclasses.replace(CTX, message_type="global-model")
POLICY = EnvelopePolicy(max_payload_bytes=4096)
# Two valid envelopes of the same context, so splices can mix real headers and bodies.
UPLINK = [
    seal(b"update-a" * 40, CTX, SERVER.public_bytes(), DEVICE),
    seal(b"update-b" * 41, CTX, SERVER.public_bytes(), DEVICE, aead="chacha20-poly1305"),
]
DOWNLINK = [
    seal_for_device(b"model-a" * 40, DOWN_CTX, DEVICE.public_bytes(), SERVER),
    seal_for_device(b"model-b" * 39, DOWN_CTX, DEVICE.public_bytes(), SERVER),
]
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def mutate(draw: st.DrawFn, blob: bytes, donor: bytes) -> bytes:
    """Apply one to three random edits: bit flip, truncation, insertion, replacement, splice."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "replace", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "splice":
            data = data[:at] + donor[draw(st.integers(0, len(donor))) :]
    return bytes(data)


def envelope_pair(envelopes: list[bytes]) -> st.SearchStrategy[bytes]:
    """A mutation of one valid envelope, spliced (if at all) with the other."""
    first, second = envelopes
    return st.one_of(mutate(first, second), mutate(second, first))


def test_unmutated_envelopes_open() -> None:
    for blob in UPLINK:
        assert open_envelope(blob, CTX, SERVER, DEVICE.signing_public_bytes(), POLICY,
                             ReplayGuard())  # fmt: skip
    for blob in DOWNLINK:
        assert open_from_server(blob, DOWN_CTX, DEVICE, SERVER.signing_public_bytes(), POLICY,
                                ReplayGuard())  # fmt: skip


@FUZZ
@given(blob=envelope_pair(UPLINK))
def test_mutated_uplink_envelope_is_rejected(blob: bytes) -> None:
    assume(blob not in UPLINK)
    with pytest.raises(EnvelopeRejected):
        open_envelope(blob, CTX, SERVER, DEVICE.signing_public_bytes(), POLICY, ReplayGuard())


@settings(FUZZ, max_examples=150)
@given(blob=envelope_pair(DOWNLINK))
def test_mutated_downlink_envelope_is_rejected(blob: bytes) -> None:
    assume(blob not in DOWNLINK)
    with pytest.raises(EnvelopeRejected):
        open_from_server(
            blob, DOWN_CTX, DEVICE, SERVER.signing_public_bytes(), POLICY, ReplayGuard()
        )


@settings(FUZZ, max_examples=150)
@given(blob=st.binary(max_size=600) | st.builds(bytes.__add__, st.just(UPLINK[0][:8]),
                                                 st.binary(max_size=600)))  # fmt: skip
def test_arbitrary_bytes_are_rejected(blob: bytes) -> None:
    with pytest.raises(EnvelopeRejected):
        open_envelope(blob, CTX, SERVER, DEVICE.signing_public_bytes(), POLICY, ReplayGuard())
