"""The compression client mod: delta payloads, seeding, error feedback, downlink, pass-through."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.app.metadata import Metadata

from clients.compression import compression_mod
from fedhar.transport.codec import channel_scales, decode_update
from fedhar.transport.payload import from_bytes
from fedhar.wire import (
    COMPRESSED_KEY,
    RESIDUAL_KEY,
    ClientIdentity,
    TrainReport,
    arrays_to_state,
    decline_reply,
    state_to_arrays,
    train_reply,
)
from tests.helpers.identity import task_identity

NODE, PARTITION = 42, 3
G = torch.Generator().manual_seed(0)
GLOBAL = {
    "conv.weight": torch.randn(8, 6, 5, generator=G),
    "conv.bias": torch.randn(8, generator=G),
    "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
}
FLOATS = {"conv.weight": (8, 6, 5), "conv.bias": (8,)}
STEP = {"conv.weight": 0.01 * torch.randn(8, 6, 5, generator=G), "conv.bias": torch.zeros(8)}


@pytest.fixture(autouse=True)
def client_task() -> Iterator[None]:
    """Replies need the identity of the task creating them, as a ClientApp has."""
    with task_identity(node_id=NODE):
        yield


def message(server_round: int = 1, kind: str = MessageType.TRAIN) -> Message:
    metadata = Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
        group_id=str(server_round), created_at=time.time(), ttl=60.0, message_type=kind,
    )  # fmt: skip
    config = ConfigRecord({"server-round": server_round, "lr": 0.1})
    content = RecordDict({"arrays": state_to_arrays(GLOBAL), "config": config})
    return Message(metadata=metadata, content=content)


def context(partition: int = PARTITION) -> Context:
    return Context(1, NODE, {"partition-id": partition}, RecordDict(), {})


def trainer(step: dict[str, torch.Tensor]) -> Callable[[Message, Context], Message]:
    """A handler that adds ``step`` to the received floats and counts one batch."""

    def train(msg: Message, _: Context) -> Message:
        state = arrays_to_state(msg.content["arrays"])
        local = {n: t + step[n] if n in step else t + 1 for n, t in state.items()}
        report = TrainReport(num_examples=12, train_loss=0.3, num_steps=2, compute_seconds=0.1)
        reply = train_reply(local, report, ClientIdentity("u3", "watch"), ["conv.weight"])
        return Message(reply, reply_to=msg)

    return train


def payload(reply: Message) -> bytes:
    blob = reply.content[COMPRESSED_KEY]["payload"]
    assert isinstance(blob, bytes)
    return blob


def test_reply_carries_the_delta_within_one_quantization_step() -> None:
    reply = compression_mod(bits=8)(message(), context(), trainer(STEP))
    assert set(reply.content) == {"metrics", "client", "trained", COMPRESSED_KEY}
    encoded = from_bytes(payload(reply), FLOATS)
    delta = decode_update(encoded, FLOATS, bits=8)
    weight = next(t for t in encoded.tensors if t.name == "conv.weight")
    scale = torch.from_numpy(channel_scales(encoded, weight)).float().reshape(8, 1, 1)
    assert torch.all((delta["conv.weight"] - STEP["conv.weight"]).abs() <= scale * 1.0001)
    assert torch.equal(delta["conv.bias"], torch.zeros(8))  # untouched tensors travel exactly
    assert len(payload(reply)) == 17 + 4 + 2 + 4 + 8 * 6 * 5 + 8  # header, scales, codes


def test_seeded_by_run_seed_round_and_partition() -> None:
    def blob(seed: int, server_round: int, partition: int) -> bytes:
        mod = compression_mod(bits=2, seed=seed)
        return payload(mod(message(server_round), context(partition), trainer(STEP)))

    assert blob(0, 1, PARTITION) == blob(0, 1, PARTITION)
    assert len({blob(0, 1, PARTITION), blob(1, 1, PARTITION), blob(0, 2, PARTITION),
                blob(0, 1, PARTITION + 1)}) == 4  # fmt: skip


def test_error_feedback_residual_persists_in_context_state() -> None:
    ctx, mod = context(), compression_mod(bits=2, topk_fraction=0.3, error_feedback=True)
    sent, true = torch.zeros(8, 6, 5), torch.zeros(8, 6, 5)
    for server_round in (1, 2, 3):
        reply = mod(message(server_round), ctx, trainer(STEP))
        sent += decode_update(from_bytes(payload(reply), FLOATS), FLOATS)["conv.weight"]
        true += STEP["conv.weight"]
        residual = arrays_to_state(ctx.state.array_records[RESIDUAL_KEY])
        assert torch.allclose(sent + residual["conv.weight"], true, atol=1e-5)
    assert residual["conv.weight"].abs().sum() > 0
    fresh = context()
    compression_mod(bits=2)(message(), fresh, trainer(STEP))
    assert RESIDUAL_KEY not in fresh.state.array_records  # no error feedback: nothing kept


def test_other_messages_declines_and_errors_pass_through() -> None:
    mod = compression_mod()
    evaluate = message(kind=MessageType.EVALUATE)
    assert mod(evaluate, context(), lambda m, _: m) is evaluate

    def declines(msg: Message, _: Context) -> Message:
        return Message(decline_reply("no plan fits", ClientIdentity("u3", "mcu")), reply_to=msg)

    reply = mod(message(), context(), declines)
    assert "decline" in reply.content and COMPRESSED_KEY not in reply.content


def test_mismatches_raise_clear_errors() -> None:
    def other_model(msg: Message, _: Context) -> Message:
        report = TrainReport(num_examples=1, train_loss=0.0, num_steps=1, compute_seconds=0.0)
        reply = train_reply({"w": torch.zeros(3)}, report, ClientIdentity("u", "d"), [])
        return Message(reply, reply_to=msg)

    with pytest.raises(ValueError, match="differ in names or shapes"):
        compression_mod()(message(), context(), other_model)
    with pytest.raises(ValueError, match="bits=3"):
        compression_mod(bits=3)
    for record, problem in (({"payload": b"", "schema": b""}, "'bits'"),
                            ({"payload": b"", "schema": b"", "bits": 5}, "bits=5"),
                            ({"bits": 8}, "payload and schema")):  # fmt: skip
        downlink = message()
        downlink.content[COMPRESSED_KEY] = ConfigRecord(record)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=problem):
            compression_mod()(downlink, context(), trainer(STEP))


def test_integer_buffers_are_not_sent() -> None:
    reply = compression_mod(bits=32)(message(), context(), trainer(STEP))
    encoded = from_bytes(payload(reply), FLOATS)  # the schema holds the float tensors only
    assert [t.name for t in encoded.tensors] == sorted(FLOATS)
    local = GLOBAL["conv.weight"] + STEP["conv.weight"]  # float32, as the handler holds it
    exact = (local.double() - GLOBAL["conv.weight"].double()).float().numpy().reshape(-1)
    assert np.array_equal(encoded.tensors[1].values, exact)
