"""The encryption client mod: what it seals, what it leaves in clear, and its clear errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.app.metadata import Metadata

from clients.encryption import encryption_mod
from fedhar.transport.envelope import (
    EnvelopeContext,
    EnvelopePolicy,
    ReplayGuard,
    open_envelope,
    read_header,
)
from fedhar.transport.keys import DeviceIdentity, ServerKeyPair
from fedhar.transport.keystore import ClientKeys, RunKeys
from fedhar.transport.signed import ReplyContext, verify
from fedhar.wire import (
    ClientIdentity,
    TrainReport,
    canonical_bytes,
    decline_reply,
    record_from_bytes,
    record_to_bytes,
    state_to_arrays,
    train_reply,
)
from tests.helpers.identity import task_identity

SEED, NODE, PARTITION = 5, 42, 3
SERVER = ServerKeyPair.from_seed(99)
KEYS = ClientKeys(RunKeys(Path("unused"), seed=SEED), SERVER.fingerprint())
STATE = {
    "w": torch.linspace(-1, 1, 64),
    "bn.num_batches_tracked": torch.tensor(2**40 + 3, dtype=torch.int64),
}


@pytest.fixture(autouse=True)
def client_task() -> Iterator[None]:
    """Replies need the identity of the task creating them, as a ClientApp has."""
    with task_identity(node_id=NODE):
        yield


def server_config(**overrides: object) -> ConfigRecord:
    config = {
        "server-round": 4,
        "lr": 0.1,
        "server-public-key": SERVER.public_bytes(),
        "server-signing-key": SERVER.signing_public_bytes(),
        "run-id": "run-c",
        "payload-format": 1,
    }
    config.update(overrides)
    return ConfigRecord({k: v for k, v in config.items() if v is not None})  # type: ignore[misc]


def message(config: ConfigRecord, kind: str = MessageType.TRAIN) -> Message:
    metadata = Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
        group_id="4", created_at=time.time(), ttl=60.0, message_type=kind,
    )  # fmt: skip
    content = RecordDict({"arrays": state_to_arrays(STATE), "config": config})
    return Message(metadata=metadata, content=content)


def context() -> Context:
    return Context(1, NODE, {"partition-id": PARTITION}, RecordDict(), {})


def trains(msg: Message, _: Context) -> Message:
    report = TrainReport(num_examples=12, train_loss=0.3, num_steps=2, compute_seconds=0.1)
    return Message(train_reply(STATE, report, ClientIdentity("u3", "watch"), ["w"]), reply_to=msg)


def server_open(blob: bytes) -> RecordDict:
    expected = EnvelopeContext("run-c", 4, NODE, "train-reply", 1)
    device_key = DeviceIdentity.from_seed(SEED, PARTITION).signing_public_bytes()
    opened = open_envelope(blob, expected, SERVER, device_key, EnvelopePolicy(), ReplayGuard())
    return record_from_bytes(opened)


def test_reply_payload_is_sealed_and_the_rest_stays_in_clear() -> None:
    reply = encryption_mod(KEYS)(message(server_config()), context(), trains)
    content = reply.content
    assert "arrays" not in content
    assert set(content) == {"metrics", "client", "trained", "sealed", "transport", "signature"}
    assert content["sealed"]["inner"] == "arrays"
    assert content["metrics"]["num-examples"] == 12 and content["client"]["user"] == "u3"
    assert content["transport"]["seal-seconds"] >= 0.0
    blob = content["sealed"]["envelope"]
    assert read_header(blob).context.node_id == NODE
    assert STATE["w"].numpy().tobytes() not in blob  # the update is not readable on the wire


def test_the_server_recovers_the_exact_reply_integer_buffers_included() -> None:
    reply = encryption_mod(KEYS, aead="chacha20-poly1305")(message(server_config()), context(),
                                                           trains)  # fmt: skip
    opened = server_open(reply.content["sealed"]["envelope"])
    original = trains(message(server_config()), context()).content
    assert record_to_bytes(opened) == record_to_bytes(original)
    counts = opened["arrays"]["bn.num_batches_tracked"].numpy()
    assert counts.dtype == np.int64 and int(counts) == 2**40 + 3


def assert_signed(content: RecordDict, kind: str) -> None:
    """``content`` carries the device's signature over everything else, bound to its round."""
    device = DeviceIdentity.from_seed(SEED, PARTITION).signing_public_bytes()
    body = canonical_bytes(content, leave_out=("signature",))
    statement = ReplyContext("run-c", 4, NODE, kind).statement(body)
    verify(device, statement, content["signature"]["signature"])
    with pytest.raises(ValueError, match="does not verify"):
        verify(device, ReplyContext("run-c", 5, NODE, kind).statement(body),
               content["signature"]["signature"])  # fmt: skip


def test_every_train_and_evaluate_reply_is_signed_and_queries_pass_untouched() -> None:
    mod = encryption_mod(KEYS)
    assert_signed(mod(message(server_config()), context(), trains).content, "train")
    declined = mod(
        message(server_config()),
        context(),
        lambda m, _: Message(decline_reply("no SRAM", ClientIdentity("u3", "mcu")), reply_to=m),
    )
    assert "sealed" not in declined.content and "decline" in declined.content
    assert_signed(declined.content, "train")
    evaluated = mod(message(server_config(), MessageType.EVALUATE), context(), trains)
    assert "arrays" in evaluated.content and "sealed" not in evaluated.content
    assert_signed(evaluated.content, "evaluate")
    query = mod(message(server_config(), MessageType.QUERY), context(), trains)
    assert set(query.content) == {"arrays", "metrics", "client", "trained"}


def test_device_keys_come_from_the_os_and_stay_in_the_run_directory(tmp_path: Path) -> None:
    store = RunKeys(tmp_path / "keys")
    mod = encryption_mod(ClientKeys(store, SERVER.fingerprint()))
    content = mod(message(server_config()), context(), trains).content
    path = tmp_path / "keys" / f"device-{PARTITION}.key"
    assert path.stat().st_mode & 0o777 == 0o600
    identity = store.device(PARTITION)
    assert identity.public_keys() != DeviceIdentity.from_seed(SEED, PARTITION).public_keys()
    body = canonical_bytes(content, leave_out=("signature",))
    verify(identity.signing_public_bytes(), ReplyContext("run-c", 4, NODE, "train").statement(
        body), content["signature"]["signature"])  # fmt: skip


def test_missing_server_keys_name_the_server_wrapper() -> None:
    with pytest.raises(ValueError, match="EncryptedTransport"):
        encryption_mod(KEYS)(
            message(server_config(**{"server-public-key": None})), context(), trains
        )


def test_server_keys_other_than_the_pinned_ones_are_refused() -> None:
    other = ServerKeyPair.from_seed(100)  # a man in the middle with a consistent key pair
    config = server_config(**{"server-public-key": other.public_bytes(),
                              "server-signing-key": other.signing_public_bytes(),
                              "server-key-fingerprint": other.fingerprint()})  # fmt: skip
    with pytest.raises(ValueError, match="not the pinned server"):
        encryption_mod(KEYS)(message(config), context(), trains)
    with pytest.raises(ValueError, match="not the pinned server"):
        encryption_mod(KEYS)(message(config, MessageType.EVALUATE), context(), trains)


def test_unknown_payload_format_and_aead_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="update the client"):
        encryption_mod(KEYS)(message(server_config(**{"payload-format": 9})), context(), trains)
    with pytest.raises(ValueError, match="aes-256-gcm"):
        encryption_mod(KEYS, aead="aes-128")


def test_a_model_in_clear_is_refused_when_the_downlink_is_sealed() -> None:
    with pytest.raises(ValueError, match="same downlink"):
        encryption_mod(KEYS, downlink=True)(message(server_config()), context(), trains)


def test_the_mod_ships_to_simulation_workers() -> None:
    from ray import cloudpickle

    mod = cloudpickle.loads(cloudpickle.dumps(encryption_mod(KEYS, downlink=True)))
    with pytest.raises(ValueError, match="same downlink"):
        mod(message(server_config()), context(), trains)
