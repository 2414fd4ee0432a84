"""Envelopes and keys: round trips, reproducible keys, and one test per rejection reason."""

from __future__ import annotations

import dataclasses

import pytest

from fedhar.transport.envelope import (
    AEADS,
    HEADER_BYTES,
    SIGNATURE_BYTES,
    EnvelopeContext,
    EnvelopePolicy,
    EnvelopeRejected,
    ReplayGuard,
    open_envelope,
    open_from_server,
    read_header,
    seal,
    seal_for_device,
)
from fedhar.transport.keys import (
    DeviceIdentity,
    DevicePublicKeys,
    KeyRegistry,
    ServerKeyPair,
    parse_ed25519_public_key,
)

SERVER = ServerKeyPair.from_seed(1)
DEVICE = DeviceIdentity.from_seed(7, device_id=3)
OTHER = DeviceIdentity.from_seed(7, device_id=4)
CTX = EnvelopeContext("run-a", round=2, node_id=3, message_type="train-reply", format_version=1)
PAYLOAD = bytes(range(256)) * 8
POLICY = EnvelopePolicy()

SMALL_ORDER_ED25519 = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    b"\xec" + b"\xff" * 30 + b"\x7f",
    b"\xed" + b"\xff" * 30 + b"\x7f",
    b"\xee" + b"\xff" * 30 + b"\x7f",
]


def open_uplink(
    blob: bytes,
    expected: EnvelopeContext = CTX,
    device_key: bytes | None = DEVICE.signing_public_bytes(),
    policy: EnvelopePolicy = POLICY,
    guard: ReplayGuard | None = None,
) -> bytes:
    return open_envelope(blob, expected, SERVER, device_key, policy, guard or ReplayGuard())


def reject_reason(blob: bytes, **kwargs: object) -> str:
    with pytest.raises(EnvelopeRejected) as info:
        open_uplink(blob, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def resign(header: bytes, ciphertext: bytes, signer: DeviceIdentity = DEVICE) -> bytes:
    """A well-formed envelope whose sender signed whatever it was given."""
    body = header + ciphertext
    return body + signer.sign(body)


def split(blob: bytes) -> tuple[bytes, bytes]:
    size = read_header(blob).size
    return blob[:size], blob[size:-SIGNATURE_BYTES]


@pytest.mark.parametrize("aead", sorted(AEADS))
def test_round_trip(aead: str) -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE, aead=aead)
    assert read_header(blob).aead == aead
    assert PAYLOAD not in blob
    assert open_uplink(blob) == PAYLOAD


@pytest.mark.parametrize("aead", sorted(AEADS))
def test_downlink_round_trip(aead: str) -> None:
    ctx = dataclasses.replace(CTX, message_type="global-model")
    blob = seal_for_device(PAYLOAD, ctx, DEVICE.public_bytes(), SERVER, aead=aead)
    opened = open_from_server(
        blob, ctx, DEVICE, SERVER.signing_public_bytes(), POLICY, ReplayGuard()
    )
    assert opened == PAYLOAD
    with pytest.raises(EnvelopeRejected) as info:  # another device cannot read it
        open_from_server(blob, ctx, OTHER, SERVER.signing_public_bytes(), POLICY, ReplayGuard())
    assert info.value.reason == "decryption-failed"


def test_empty_payload_round_trips() -> None:
    assert open_uplink(seal(b"", CTX, SERVER.public_bytes(), DEVICE)) == b""


def test_envelopes_are_randomised() -> None:
    first, second = (seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE) for _ in range(2))
    assert first != second


def test_identity_from_seed_is_deterministic() -> None:
    again = DeviceIdentity.from_seed(7, device_id=3)
    assert again.public_keys() == DEVICE.public_keys()
    assert OTHER.signing_public_bytes() != DEVICE.signing_public_bytes()
    assert DeviceIdentity.from_seed(8, 3).public_keys() != DEVICE.public_keys()
    assert ServerKeyPair.from_seed(1).public_bytes() == SERVER.public_bytes()
    assert DeviceIdentity.generate().public_keys() != DeviceIdentity.generate().public_keys()


def test_fingerprint_is_stable() -> None:
    assert SERVER.fingerprint() == "93b058d8ed72dd83a35c7595aebb52fd"
    assert DEVICE.fingerprint() == "832d1c8debb0afab064f8403190e35e2"
    assert ServerKeyPair.from_seed(2).fingerprint() != SERVER.fingerprint()


def test_bad_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="int seed"):
        ServerKeyPair.from_seed(-1)
    with pytest.raises(TypeError, match="int or bytes"):
        ServerKeyPair.from_seed(1.5)  # type: ignore[arg-type]


def test_registry_refuses_malformed_and_swapped_keys() -> None:
    registry = KeyRegistry()
    registry.register(3, DEVICE.public_keys())
    registry.register(3, DEVICE.public_keys())  # the same key again is fine
    assert registry.signing_key(3) == DEVICE.signing_public_bytes()
    assert registry.exchange_key(3) == DEVICE.public_bytes()
    assert registry.signing_key(9) is None and 9 not in registry and len(registry) == 1
    with pytest.raises(ValueError, match="already holds"):
        registry.register(3, OTHER.public_keys())
    with pytest.raises(ValueError, match="32 raw bytes, got 31"):
        DevicePublicKeys(bytes(31), DEVICE.public_bytes())
    with pytest.raises(ValueError, match="small-order"):
        DevicePublicKeys(bytes([1]) + bytes(31), DEVICE.public_bytes())


@pytest.mark.parametrize("key", SMALL_ORDER_ED25519)
@pytest.mark.parametrize("sign_bit", [0x00, 0x80])
def test_small_order_signing_keys_are_refused(key: bytes, sign_bit: int) -> None:
    with pytest.raises(ValueError, match="small-order"):
        parse_ed25519_public_key(key[:-1] + bytes([key[-1] | sign_bit]))


def test_bad_arguments_to_seal_are_value_errors() -> None:
    with pytest.raises(ValueError, match="valid"):
        seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE, aead="aes-128-cbc")
    with pytest.raises(ValueError, match="other way"):
        seal(PAYLOAD, dataclasses.replace(CTX, message_type="global-model"),
             SERVER.public_bytes(), DEVICE)  # fmt: skip
    with pytest.raises(ValueError, match="32 raw bytes"):
        seal(PAYLOAD, CTX, SERVER.public_bytes()[:-1], DEVICE)
    with pytest.raises(ValueError, match="low-order"):
        seal(PAYLOAD, CTX, bytes(32), DEVICE)
    with pytest.raises(ValueError, match="valid"):
        EnvelopeContext("run-a", 2, 3, "train-replies", 1)
    with pytest.raises(ValueError, match="run_id"):
        EnvelopeContext("", 2, 3, "train-reply", 1)
    with pytest.raises(ValueError, match="node_id"):
        EnvelopeContext("run-a", 2, -1, "train-reply", 1)
    with pytest.raises(ValueError, match="allowed_aeads"):
        EnvelopePolicy(allowed_aeads=frozenset({"rot13"}))


def test_policy_accepts_a_list_from_config() -> None:
    policy = EnvelopePolicy(allowed_aeads=["aes-256-gcm"])  # type: ignore[arg-type]
    assert policy.allowed_aeads == frozenset({"aes-256-gcm"})


def test_replay_guard_is_bounded_per_run() -> None:
    guard = ReplayGuard(max_per_run=2)
    assert guard.claim("r", b"a") and guard.claim("r", b"b") and not guard.claim("r", b"a")
    assert guard.claim("other-run", b"a")
    assert guard.claim("r", b"c")  # evicts "a", the oldest
    assert guard.claim("r", b"a")


# --- one test per rejection ------------------------------------------------------------------


def test_replay_of_an_earlier_round_is_a_context_mismatch() -> None:
    old = seal(PAYLOAD, dataclasses.replace(CTX, round=1), SERVER.public_bytes(), DEVICE)
    assert reject_reason(old) == "context-mismatch"


def test_replay_of_another_run_is_a_context_mismatch() -> None:
    old = seal(PAYLOAD, dataclasses.replace(CTX, run_id="run-b"), SERVER.public_bytes(), DEVICE)
    assert reject_reason(old) == "context-mismatch"


def test_another_nodes_envelope_is_rejected() -> None:
    ctx4 = dataclasses.replace(CTX, node_id=4)
    theirs = seal(PAYLOAD, ctx4, SERVER.public_bytes(), OTHER)
    assert reject_reason(theirs) == "bad-signature"  # checked against node 3's key
    assert reject_reason(theirs, device_key=OTHER.signing_public_bytes()) == "context-mismatch"


def test_same_envelope_twice_is_a_replay() -> None:
    guard = ReplayGuard()
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert open_uplink(blob, guard=guard) == PAYLOAD
    assert reject_reason(blob, guard=guard) == "replay"


@pytest.mark.parametrize(
    ("where", "mask", "reason"),
    [
        (0, 0x01, "malformed"),  # magic
        (4, 0x01, "unsupported-version"),
        (5, 0x04, "aead-not-allowed"),
        (6, 0x04, "malformed"),  # message type
        (8, 0x01, "bad-signature"),  # format version
        (HEADER_BYTES - 4, 0x01, "oversize"),  # ciphertext length: +16 MiB
        (HEADER_BYTES - 1, 0x01, "truncated"),  # ciphertext length: +1
        (HEADER_BYTES - 2, 0x08, "malformed"),  # ciphertext length: -2048, trailing bytes
        (30, 0x01, "bad-signature"),  # ephemeral key
        (HEADER_BYTES + 1, 0x01, "bad-signature"),  # run id
        (-SIGNATURE_BYTES - 1, 0x80, "bad-signature"),  # ciphertext
        (-1, 0x01, "bad-signature"),  # signature
    ],
)
def test_flipped_bit_is_rejected(where: int, mask: int, reason: str) -> None:
    blob = bytearray(seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE))
    blob[where] ^= mask
    assert reject_reason(bytes(blob)) == reason


@pytest.mark.parametrize("keep", [0, 10, HEADER_BYTES + 2, -1, -SIGNATURE_BYTES - 16])
def test_truncation_is_rejected(keep: int) -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert reject_reason(blob[:keep]) == "truncated"


def test_trailing_bytes_are_rejected() -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert reject_reason(blob + b"\x00") == "malformed"


def test_non_bytes_input_is_rejected() -> None:
    assert reject_reason("not bytes") == "malformed"  # type: ignore[arg-type]


def test_wrong_signing_key_is_rejected() -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert reject_reason(blob, device_key=OTHER.signing_public_bytes()) == "bad-signature"


def test_unknown_signing_key_is_rejected() -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert reject_reason(blob, device_key=None) == "unknown-signer"


def test_oversize_payload_is_rejected_from_declared_length() -> None:
    policy = EnvelopePolicy(max_payload_bytes=1000)
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert reject_reason(blob, policy=policy) == "oversize"
    # a small blob that declares a huge ciphertext is refused before its signature is checked
    huge = dataclasses.replace(read_header(blob), ciphertext_bytes=2**31).pack()
    assert reject_reason(huge + b"\x00" * 100, policy=policy) == "oversize"


def test_oversize_blob_is_rejected_before_parsing() -> None:
    policy = EnvelopePolicy(max_payload_bytes=1000)
    assert reject_reason(b"\x00" * 2000, policy=policy) == "oversize"


def test_malformed_ephemeral_key_is_rejected() -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    _, ciphertext = split(blob)
    low_order = dataclasses.replace(read_header(blob), ephemeral_key=bytes(32)).pack()
    assert reject_reason(resign(low_order, ciphertext)) == "bad-ephemeral-key"


@pytest.mark.parametrize("key", [bytes(31), bytes([1]) + bytes(31), b"x" * 33])
def test_malformed_registered_key_is_rejected(key: bytes) -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert reject_reason(blob, device_key=key) == "bad-signer-key"


def test_algorithm_downgrade_is_rejected() -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE, aead="chacha20-poly1305")
    policy = EnvelopePolicy(allowed_aeads=frozenset({"aes-256-gcm"}))
    assert reject_reason(blob, policy=policy) == "aead-not-allowed"


def test_format_version_downgrade_is_rejected() -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    assert reject_reason(blob, policy=EnvelopePolicy(min_format_version=2)) == (
        "format-version-too-old"
    )


def test_downlink_envelope_sent_up_is_wrong_direction() -> None:
    ctx = dataclasses.replace(CTX, message_type="global-model")
    blob = seal_for_device(PAYLOAD, ctx, DEVICE.public_bytes(), SERVER)
    reason = reject_reason(blob, expected=ctx, device_key=SERVER.signing_public_bytes())
    assert reason == "wrong-direction"


def test_ciphertext_that_does_not_decrypt_is_rejected() -> None:
    blob = seal(PAYLOAD, CTX, SERVER.public_bytes(), DEVICE)
    header, ciphertext = split(blob)
    garbled = bytes([ciphertext[0] ^ 0xFF]) + ciphertext[1:]
    assert reject_reason(resign(header, garbled)) == "decryption-failed"


@pytest.mark.parametrize(
    "sealed_as",
    [
        dataclasses.replace(CTX, round=1),
        dataclasses.replace(CTX, node_id=4),
        dataclasses.replace(CTX, run_id="run-b"),
        dataclasses.replace(CTX, format_version=2),
    ],
    ids=["round", "node-id", "run-id", "format-version"],
)
def test_relabelled_and_resigned_header_fails_decryption(sealed_as: EnvelopeContext) -> None:
    """The signer vouches for the new header, but the AEAD still binds the one it sealed."""
    blob = seal(PAYLOAD, sealed_as, SERVER.public_bytes(), DEVICE)
    _, ciphertext = split(blob)
    relabelled = dataclasses.replace(read_header(blob), context=CTX).pack()
    assert reject_reason(resign(relabelled, ciphertext)) == "decryption-failed"


def test_relabelled_message_type_fails_decryption() -> None:
    """A downlink envelope encrypted to the server's key, relabelled as a device's reply."""
    downlink = dataclasses.replace(CTX, message_type="global-model")
    blob = seal_for_device(PAYLOAD, downlink, SERVER.public_bytes(), SERVER)
    _, ciphertext = split(blob)
    relabelled = dataclasses.replace(read_header(blob), context=CTX).pack()
    assert reject_reason(resign(relabelled, ciphertext)) == "decryption-failed"
