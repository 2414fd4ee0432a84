"""Encrypted transport wrapper: sealed round trips and one test per rejection, without a Grid.

Replies are sealed by the real client mod (``clients.encryption``) from the wrapper's own
train messages, so both halves of the wire are exercised together.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy

from clients.encryption import encryption_mod
from fedhar.transport.envelope import (
    SIGNATURE_BYTES,
    EnvelopeContext,
    read_header,
    seal,
)
from fedhar.transport.keys import DeviceIdentity, DevicePublicKeys
from fedhar.transport.keystore import ClientKeys, RunKeys
from fedhar.wire import ClientIdentity, NodeInfo, TrainReport, record_to_bytes, train_reply
from strategies.encryption import EncryptedTransport
from strategies.run_info import FleetDirectory, RunInfo
from tests.helpers.replies import make_reply

SEED = 3
NODES = {11: 0, 12: 1, 13: 2}  # Flower node id -> partition id
VALUES = {11: 1.0, 12: 2.0, 13: 4.0}
EXAMPLES = {11: 10, 12: 30, 13: 20}
STORE = RunKeys(Path("unused"), seed=SEED)  # seeded: tests forge with known device keys
KEYS = ClientKeys(STORE, STORE.server().fingerprint())


@pytest.fixture(autouse=True)
def replies_arrive_screened(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests hand aggregation replies as the run's grid leaves them, screened: the
    envelope checks are what they test. ``test_signed_replies`` tests the screen."""
    monkeypatch.setattr(EncryptedTransport, "_checked", lambda self, replies: list(replies))


class FakeGrid:
    """Just enough Grid for FedAvg to sample every node."""

    def get_node_ids(self) -> list[int]:
        return sorted(NODES)


class Recorder(FedAvg):
    """FedAvg that remembers the replies it was given (declines are left to Tracking)."""

    def __init__(self) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
        self.seen: list[Message] = []

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        self.seen = list(replies)
        updates = [m for m in self.seen if m.has_error() or "decline" not in m.content]
        return super().aggregate_train(server_round, updates)


def make_run(
    tmp_path: Path, identities: dict[int, DeviceIdentity] | None = None, unenrolled: tuple = ()
) -> RunInfo:
    """A run whose fleet enrolled the nodes of NODES but ``unenrolled``, with ``identities``
    for their keys (default: each device's own)."""
    nodes = {node: part for node, part in NODES.items() if node not in unenrolled}
    directory = {n: NodeInfo(n, part, f"u{part}", "watch", 1.0, 100) for n, part in nodes.items()}
    run = RunInfo("run-x", SEED, tmp_path, FleetDirectory(dict(directory)), key_store=STORE)
    for node, part in nodes.items():
        identity = (identities or {}).get(node, device(part))
        run.keys.register(node, identity.public_keys())
    return run


def device(partition: int) -> DeviceIdentity:
    return DeviceIdentity.from_seed(SEED, partition)


def make_wrapper(tmp_path: Path, **kwargs: object) -> EncryptedTransport:
    run = kwargs.pop("run", None) or make_run(tmp_path)
    return EncryptedTransport(Recorder(), run, **kwargs)  # type: ignore[arg-type]


def state_of(node: int) -> dict[str, torch.Tensor]:
    return {
        "w": torch.full((3,), VALUES[node]) + torch.arange(3) / 7,
        "bn.num_batches_tracked": torch.tensor(node * 1000 + 7, dtype=torch.int64),
    }


def handler_for(node: int, seen: list[Message] | None = None):  # type: ignore[no-untyped-def]
    def train(msg: Message, context: Context) -> Message:
        if seen is not None:
            seen.append(msg)
        report = TrainReport(EXAMPLES[node], 0.5, 3, 0.01)
        content = train_reply(state_of(node), report, ClientIdentity(f"u{node}", "watch"), ["w"])
        return Message(content, reply_to=msg)

    return train


def train_messages(
    wrapper: EncryptedTransport, server_round: int = 1, arrays: ArrayRecord | None = None
) -> dict[int, Message]:
    arrays = arrays or ArrayRecord({"w": torch.zeros(3)})
    messages = wrapper.configure_train(server_round, arrays, ConfigRecord({"lr": 0.1}), FakeGrid())
    return {m.metadata.dst_node_id: m for m in messages}


def client_context(node: int) -> Context:
    return Context(1, node, {"partition-id": NODES[node]}, RecordDict(), {})


def screened(wrapper: EncryptedTransport, content: RecordDict, node: int) -> RecordDict:
    """``content`` as the run's grid hands it on: its device signature checked and removed."""
    reply = wrapper.screen_reply(make_reply(content, node_id=node))
    assert not reply.has_error(), reply.error.reason
    return reply.content


def signed_content(
    wrapper: EncryptedTransport, node: int, server_round: int = 1, **mod_kwargs: object
) -> RecordDict:
    """What ``node``'s client mod sends back for its train message of ``server_round``."""
    message = train_messages(wrapper, server_round)[node]
    mod = encryption_mod(KEYS, **mod_kwargs)  # type: ignore[arg-type]
    return mod(message, client_context(node), handler_for(node)).content


def sealed_content(
    wrapper: EncryptedTransport, node: int, server_round: int = 1, **mod_kwargs: object
) -> RecordDict:
    """``signed_content`` as screening leaves it."""
    return screened(wrapper, signed_content(wrapper, node, server_round, **mod_kwargs), node)


def unsigned(content: RecordDict) -> RecordDict:
    """``content`` without its device signature: as if it had got past screening."""
    return RecordDict({k: v for k, v in content.items() if k != "signature"})


def clear_content(node: int) -> RecordDict:
    report = TrainReport(EXAMPLES[node], 0.5, 3, 0.01)
    return train_reply(state_of(node), report, ClientIdentity(f"u{node}", "watch"), ["w"])


def with_envelope(content: RecordDict, envelope: bytes) -> RecordDict:
    """``content`` with its envelope replaced (everything else as the client sent it)."""
    records = dict(content.items())
    records["sealed"] = ConfigRecord({**content["sealed"], "envelope": envelope})
    return RecordDict(records)


def aggregate(wrapper: EncryptedTransport, replies: list[Message], server_round: int = 1):  # type: ignore[no-untyped-def]
    arrays, _ = wrapper.aggregate_train(server_round, replies)
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}


def honest_replies(wrapper: EncryptedTransport, nodes=(11, 12), server_round: int = 1):  # type: ignore[no-untyped-def]
    return [make_reply(sealed_content(wrapper, n, server_round), node_id=n) for n in nodes]


def assert_rejected_without_effect(
    tmp_path: Path,
    bad: Message,
    reason: str,
    wrapper: EncryptedTransport | None = None,
    server_round: int = 1,
) -> None:
    """Aggregating honest replies plus ``bad`` equals aggregating the honest ones alone."""
    wrapper = wrapper or make_wrapper(tmp_path)
    honest = honest_replies(wrapper, server_round=server_round)
    with_bad = aggregate(wrapper, [*honest, bad], server_round)
    stats = wrapper.round_stats()
    assert stats["encryption/rejected"] == 1 and stats[f"encryption/rejected/{reason}"] == 1, stats
    assert stats["encryption/accepted"] == 2
    [(node, why)] = wrapper.round_rejections()
    assert node == bad.metadata.src_node_id and why.startswith(f"encryption rejected {reason}: ")
    reference = make_wrapper(tmp_path)
    alone = aggregate(reference, honest_replies(reference, server_round=server_round), server_round)
    assert with_bad.keys() == alone.keys()
    for key in alone:
        np.testing.assert_array_equal(with_bad[key], alone[key])


def test_sealed_round_trip_aggregates_bit_for_bit_like_plain_fedavg(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    sealed = aggregate(wrapper, honest_replies(wrapper, nodes=(11, 12, 13)))
    plain_strategy = Recorder()
    plain, _ = plain_strategy.aggregate_train(
        1, [make_reply(clear_content(n), node_id=n) for n in (11, 12, 13)]
    )
    assert plain is not None
    for key, array in plain.items():
        np.testing.assert_array_equal(sealed[key], array.numpy())
    stats = wrapper.round_stats()
    assert stats["encryption/accepted"] == 3 and stats["encryption/rejected"] == 0
    assert stats["encryption/overhead-bytes"] > 0 and stats["encryption/client-seal-seconds"] > 0


def test_accepted_replies_are_restored_exactly(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    aggregate(wrapper, honest_replies(wrapper, nodes=(11,)))
    (restored,) = wrapper.strategy.seen  # type: ignore[attr-defined]
    assert record_to_bytes(restored.content) == record_to_bytes(clear_content(11))


def test_compressed_payload_is_restored_for_the_inner_wrapper(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    message = train_messages(wrapper)[11]
    compressed = RecordDict(
        {
            "compressed": ConfigRecord({"payload": b"FHQC\x01\x00" + bytes(range(40)), "bits": 8}),
            "metrics": MetricRecord({"num-examples": 5}),
            "client": ConfigRecord({"user": "u11", "device": "watch"}),
        }
    )
    mod = encryption_mod(KEYS)
    reply = mod(message, client_context(11), lambda m, c: Message(compressed, reply_to=m))
    assert reply.content["sealed"]["inner"] == "compressed"
    assert "compressed" not in reply.content
    opened = wrapper._open(1, make_reply(screened(wrapper, reply.content, 11), node_id=11))
    assert record_to_bytes(opened.content) == record_to_bytes(compressed)


def test_keys_reach_every_train_message_and_come_from_the_run_key_store(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    for message in train_messages(wrapper).values():
        config = message.content["config"]
        assert config["server-public-key"] == wrapper.keys.public_bytes()
        assert config["server-signing-key"] == wrapper.keys.signing_public_bytes()
        assert "server-key-fingerprint" not in config  # the device pins it; never sent
        assert config["run-id"] == wrapper.run.transport_id and config["lr"] == 0.1
    assert wrapper.keys.fingerprint() == KEYS.server_fingerprint  # seeded store
    fresh = dataclasses.replace(make_run(tmp_path), key_store=RunKeys(tmp_path / "keys"))
    os_keys = EncryptedTransport(Recorder(), fresh).keys
    assert os_keys.fingerprint() != wrapper.keys.fingerprint()
    assert EncryptedTransport(Recorder(), fresh).keys.fingerprint() == os_keys.fingerprint()


def test_a_run_without_a_key_store_cannot_encrypt(tmp_path: Path) -> None:
    run = dataclasses.replace(make_run(tmp_path), key_store=None)
    with pytest.raises(ValueError, match="no key store"):
        EncryptedTransport(Recorder(), run)


def test_fingerprint_is_logged_at_construction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="fedhar"):
        wrapper = make_wrapper(tmp_path)
    logged = [r.getMessage() for r in caplog.records if r.name == "fedhar"]
    assert logged == [f"run run-x: server key fingerprint {wrapper.keys.fingerprint()}"]


def test_replay_of_the_same_envelope_in_the_same_round(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    first = sealed_content(wrapper, 11)
    replies = [make_reply(first, node_id=11), make_reply(first, node_id=11)]
    aggregate(wrapper, [*replies, *honest_replies(wrapper, nodes=(12,))])
    stats = wrapper.round_stats()
    assert stats["encryption/rejected/replay"] == 1 and stats["encryption/accepted"] == 2


def test_replay_of_an_earlier_round(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    old = sealed_content(wrapper, 13, server_round=1)
    assert_rejected_without_effect(
        tmp_path, make_reply(old, node_id=13), "context-mismatch", wrapper, server_round=2
    )


def test_replay_of_another_nodes_envelope(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    stolen = sealed_content(wrapper, 13)
    assert_rejected_without_effect(
        tmp_path, make_reply(stolen, node_id=12), "bad-signature", wrapper
    )


@pytest.mark.parametrize("where", ["magic", "round", "run-id", "ciphertext", "tag", "signature"])
def test_a_flipped_bit_anywhere_is_rejected(tmp_path: Path, where: str) -> None:
    wrapper = make_wrapper(tmp_path)
    content = sealed_content(wrapper, 13)
    blob = bytearray(content["sealed"]["envelope"])
    size = read_header(bytes(blob)).size
    tag_end, end = len(blob) - SIGNATURE_BYTES, len(blob)
    offset = {"magic": 0, "round": 12, "run-id": size - 1, "ciphertext": size + 5,
              "tag": tag_end - 1, "signature": end - 1}[where]  # fmt: skip
    blob[offset] ^= 0x10
    bad = make_reply(with_envelope(content, bytes(blob)), node_id=13)
    reason = "malformed" if where == "magic" else "bad-signature"
    assert_rejected_without_effect(tmp_path, bad, reason, wrapper)


@pytest.mark.parametrize("keep", [0, 40, 200, -1])
def test_truncation_is_rejected(tmp_path: Path, keep: int) -> None:
    wrapper = make_wrapper(tmp_path)
    content = sealed_content(wrapper, 13)
    blob = content["sealed"]["envelope"][:keep]
    bad = make_reply(with_envelope(content, blob), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "truncated", wrapper)


def test_wrong_signing_key_is_screened_out_and_its_envelope_rejected(tmp_path: Path) -> None:
    run = make_run(tmp_path, identities={13: device(9)})
    wrapper = make_wrapper(tmp_path, run=run)
    signed = signed_content(wrapper, 13)
    out = wrapper.screen_reply(make_reply(signed, node_id=13))
    assert out.has_error() and out.error.reason.startswith("encryption rejected bad-signature")
    bad = make_reply(unsigned(signed), node_id=13)  # past the screen, the envelope still fails
    assert_rejected_without_effect(tmp_path, bad, "bad-signature", wrapper)


def test_unknown_node_is_screened_out_and_its_envelope_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path, run=make_run(tmp_path, unenrolled=(13,)))
    signed = signed_content(wrapper, 13)
    out = wrapper.screen_reply(make_reply(signed, node_id=13))
    assert out.has_error() and "no enrolled signing key" in out.error.reason
    assert_rejected_without_effect(
        tmp_path, make_reply(unsigned(signed), node_id=13), "unknown-signer", wrapper
    )


def test_oversize_payload_is_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path, max_payload_bytes=4096)  # honest replies take ~1 KB
    message = train_messages(wrapper)[13]
    big = clear_content(13)
    big["arrays"]["extra"] = Array(np.zeros(2000, dtype=np.float32))
    sealed = encryption_mod(KEYS)(
        message, client_context(13), lambda m, c: Message(big, reply_to=m)
    )
    bad = make_reply(sealed.content, node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "oversize", wrapper)


@pytest.mark.parametrize("key", [b"\x01" * 31, bytes(32), b"\xec" + b"\xff" * 30 + b"\x7f"])
def test_malformed_device_public_key_never_reaches_the_registry(key: bytes) -> None:
    with pytest.raises(ValueError, match="device signing key"):
        DevicePublicKeys(key, device(2).public_bytes())


def test_low_order_ephemeral_key_is_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    content = sealed_content(wrapper, 13)
    blob = content["sealed"]["envelope"]
    header = read_header(blob)
    forged = dataclasses.replace(header, ephemeral_key=bytes(32)).pack()  # a low-order point
    body = forged + blob[header.size : -SIGNATURE_BYTES]
    envelope = body + device(NODES[13]).sign(body)  # the device itself signs it
    bad = make_reply(with_envelope(content, envelope), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "bad-ephemeral-key", wrapper)


def test_algorithm_downgrade_is_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path, aead_allowed=["aes-256-gcm"])
    bad = make_reply(sealed_content(wrapper, 13, aead="chacha20-poly1305"), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "aead-not-allowed", wrapper)


def test_format_version_downgrade_is_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    content = sealed_content(wrapper, 13)
    old = EnvelopeContext("run-x", 1, 13, "train-reply", format_version=0)
    envelope = seal(record_to_bytes(clear_content(13)), old, wrapper.keys.public_bytes(), device(2))
    bad = make_reply(with_envelope(content, envelope), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "format-version-too-old", wrapper)


def test_envelope_version_downgrade_is_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    content = sealed_content(wrapper, 13)
    blob = bytearray(content["sealed"]["envelope"])
    blob[4] = 0  # wire version byte
    bad = make_reply(with_envelope(content, bytes(blob)), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "unsupported-version", wrapper)


def test_unsealed_update_is_rejected(tmp_path: Path) -> None:
    bad = make_reply(clear_content(13), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "not-sealed")


def test_forged_clear_weight_is_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    content = sealed_content(wrapper, 13)
    records = dict(content.items())
    records["metrics"] = MetricRecord({**content["metrics"], "num-examples": 10**6})
    bad = make_reply(RecordDict(records), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "clear-mismatch", wrapper)


UNPICKLED: list[str] = []  # filled if anything ever unpickles a payload


def _record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "unpickled"


class PickleTrap:
    """An object whose unpickling is observable."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _record_unpickling, ()


def test_signed_object_array_is_rejected_without_unpickling(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([PickleTrap()], dtype=object), allow_pickle=True)
    trap = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    content = clear_content(13)
    content.array_records["arrays"]["trap"] = trap
    wrapper = make_wrapper(tmp_path)
    message = train_messages(wrapper)[13]
    sealed = encryption_mod(KEYS)(
        message, client_context(13), lambda m, c: Message(content, reply_to=m)
    )
    bad = make_reply(sealed.content, node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "bad-payload", wrapper)
    assert UNPICKLED == []


def test_signed_garbage_payload_is_rejected(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    content = sealed_content(wrapper, 13)
    context = EnvelopeContext(wrapper.run.transport_id, 1, 13, "train-reply", format_version=1)
    envelope = seal(b"\x0a\x05garbage", context, wrapper.keys.public_bytes(), device(2))
    bad = make_reply(with_envelope(content, envelope), node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "bad-payload", wrapper)


def test_declines_and_errors_pass_through(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path)
    decline = RecordDict({"decline": ConfigRecord({"reason": "no SRAM"})})
    replies = [*honest_replies(wrapper), make_reply(decline, node_id=13),
               make_reply(error_reason="crash", node_id=14)]  # fmt: skip
    wrapper.aggregate_train(1, replies)
    assert len(wrapper.strategy.seen) == 4  # type: ignore[attr-defined]
    assert wrapper.round_stats()["encryption/rejected"] == 0


@pytest.mark.parametrize("key", ["arrays", "compressed"])
def test_decline_carrying_clear_payload_is_rejected(tmp_path: Path, key: str) -> None:
    wrapper = make_wrapper(tmp_path)
    content = RecordDict(
        {
            "decline": ConfigRecord({"reason": "no SRAM"}),
            "arrays": ArrayRecord({"w": torch.full((3,), 1e6)}),
            "compressed": ConfigRecord({"payload": b"FHQC\x01\x00" + bytes(40), "bits": 8}),
            "metrics": MetricRecord({"num-examples": 10**6}),
        }
    )
    del content["compressed" if key == "arrays" else "arrays"]
    bad = make_reply(content, node_id=13)
    assert_rejected_without_effect(tmp_path, bad, "not-sealed", wrapper)
    seen = wrapper.strategy.seen  # type: ignore[attr-defined]
    assert [m.metadata.src_node_id for m in seen] == [11, 12]


def test_downlink_model_is_sealed_and_opened_by_the_device(tmp_path: Path) -> None:
    wrapper = make_wrapper(tmp_path, downlink=True)
    model = ArrayRecord({"w": torch.arange(3.0), "n": torch.tensor(5, dtype=torch.int64)})
    message = train_messages(wrapper, 1, model)[12]
    assert "arrays" not in message.content and "sealed-model" in message.content
    seen: list[Message] = []
    reply = encryption_mod(KEYS, downlink=True)(message, client_context(12), handler_for(12, seen))
    assert record_to_bytes(RecordDict({"arrays": seen[0].content["arrays"]})) == record_to_bytes(
        RecordDict({"arrays": model})
    )
    wrapper.aggregate_train(1, [make_reply(screened(wrapper, reply.content, 12), node_id=12)])
    assert wrapper.round_stats()["encryption/accepted"] == 1


def test_downlink_for_another_device_cannot_be_opened(tmp_path: Path) -> None:
    from fedhar.transport.envelope import EnvelopeRejected

    wrapper = make_wrapper(tmp_path, downlink=True)
    message = train_messages(wrapper)[12]
    with pytest.raises(EnvelopeRejected, match=r"context-mismatch|bad-signature|decryption"):
        encryption_mod(KEYS, downlink=True)(message, client_context(11), handler_for(11))


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chacha20-poly1305"):
        make_wrapper(tmp_path, aead_allowed=["aes-128-ctr"])
    with pytest.raises(ValueError, match="lower min_format_version"):
        make_wrapper(tmp_path, min_format_version=2)


E2E_TINY = [
    "dataset.options.num_users=6",  # 5 clients + 1 held-out user
    "dataset.options.seconds_per_user=120",
    "num_rounds=2",
    "train.epochs=1",
    "tracking.progress=false",
    "tracking.plots=false",
    "runtime.round_timeout_s=120",
    "fleet=none",  # no simulated radios: sealed bytes cannot change who straggles
]


def _wrappers_get_the_run(tmp_path: Path) -> bool:
    """Whether the composition root hands wrappers the live RunInfo (not a config copy)."""
    from experiments.compose import load_config, wrap_strategy

    run = make_run(tmp_path)
    current: object = wrap_strategy(
        load_config([*E2E_TINY, "wrappers=[encryption]"]), Recorder(), run
    )
    while not isinstance(current, EncryptedTransport):
        current = current.strategy  # type: ignore[attr-defined]
    return current.run is run


def test_wrappers_get_the_live_run(tmp_path: Path) -> None:
    assert _wrappers_get_the_run(tmp_path)


@pytest.mark.e2e
def test_sealed_run_aggregates_exactly_like_the_plain_run(tmp_path: Path) -> None:
    from experiments.compose import load_config
    from experiments.run import run_experiment
    from experiments.sinks import read_metrics
    from fedhar.checkpoint import load_checkpoint

    assert _wrappers_get_the_run(tmp_path), "wrappers get a copy of RunInfo: enrollment unseen"
    sealed = ["wrappers=[encryption]", "wrappers.encryption.server.downlink=true"]
    for name, extra in (("plain", []), ("sealed", sealed)):
        run_experiment(load_config(E2E_TINY + extra), tmp_path / name)
    plain, encrypted = (load_checkpoint(tmp_path / n) for n in ("plain", "sealed"))
    assert plain is not None and encrypted is not None
    assert list(plain.arrays) == list(encrypted.arrays)
    for key, array in plain.arrays.items():
        assert array.dtype == encrypted.arrays[key].dtype
        np.testing.assert_array_equal(array, encrypted.arrays[key])
    for row in read_metrics(tmp_path / "sealed"):
        assert row["succeeded"] == 5 and row["extra"]["encryption/accepted"] == 5
        assert row["extra"]["encryption/rejected"] == 0 and row["num_failures"] == 0
        assert row["extra"]["encryption/downlink-seal-seconds"] > 0


def compressed_client(message: Message, encrypted: bool) -> Message:
    """The client mods of wrappers=[compression,encryption] (or compression alone)."""
    from clients.compression import compression_mod

    node = message.metadata.dst_node_id
    compress = compression_mod(bits=8, seed=SEED)  # the downlink width rides in the record

    def compressed(m: Message, c: Context) -> Message:
        return compress(m, c, handler_for(node))

    if not encrypted:
        return compressed(message, client_context(node))
    return encryption_mod(KEYS, downlink=True)(message, client_context(node), compressed)


def test_composes_with_compression_both_ways(tmp_path: Path) -> None:
    """wrappers=[compression,encryption]: int8 downlink and uplink, both sealed, same aggregate."""
    from strategies.compression import CompressedUpdates

    model = ArrayRecord(state_of(11))
    results = []
    for encrypted in (False, True):
        random.seed(0)  # FedAvg samples with `random`: same order of replies, same float sums
        strategy: Strategy = CompressedUpdates(Recorder(), make_run(tmp_path), 8, 8)
        if encrypted:
            strategy = EncryptedTransport(strategy, make_run(tmp_path), downlink=True)
        messages = strategy.configure_train(1, model, ConfigRecord({"lr": 0.1}), FakeGrid())
        replies = []
        for message in messages:
            assert ("sealed-model" in message.content) == encrypted
            reply = compressed_client(message, encrypted)
            assert ("compressed" in reply.content) != encrypted
            node = message.metadata.dst_node_id
            content = screened(strategy, reply.content, node) if encrypted else reply.content  # type: ignore[arg-type]
            replies.append(make_reply(content, node_id=node))
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        results.append({k: v.numpy() for k, v in arrays.items()})
    plain, sealed = results
    assert plain.keys() == sealed.keys()
    for key in plain:
        np.testing.assert_array_equal(plain[key], sealed[key])
