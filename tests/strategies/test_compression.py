"""CompressedUpdates: decoding before aggregation, rejections, exact bytes, int8 downlink."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from clients.compression import compression_mod
from fedhar.models import build_model
from fedhar.transport.codec import CodecConfig, encode_update
from fedhar.transport.payload import HEADER_BYTES, to_bytes
from fedhar.wire import (
    ARRAYS_KEY,
    COMPRESSED_KEY,
    ClientIdentity,
    NodeInfo,
    arrays_to_state,
    decline_reply,
    state_to_arrays,
)
from strategies.compression import CompressedUpdates
from strategies.run_info import FleetDirectory, RunInfo
from tests.helpers.grids import FakeGrid
from tests.helpers.identity import act_as_node
from tests.helpers.replies import make_reply, trained_reply

NODES = [11, 12, 13]
torch.manual_seed(0)
MODEL = build_model("microbi_convlstm", in_channels=6, num_classes=7)
GLOBAL = {k: v.clone() for k, v in MODEL.state_dict().items()}
FLOATS = {k: tuple(v.shape) for k, v in GLOBAL.items() if v.is_floating_point()}
NUMEL = sum(int(np.prod(s)) for s in FLOATS.values())


def local_step(seed: int) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """A client's update: a seeded change of every float entry, integer buffers advance."""
    g = torch.Generator().manual_seed(seed)

    def update(_: str, t: torch.Tensor) -> torch.Tensor:
        return t + 0.01 * torch.randn(t.shape, generator=g) if t.is_floating_point() else t + 5

    return update


def configure(wrapper: CompressedUpdates, server_round: int = 1) -> dict[int, Message]:
    config = ConfigRecord({"server-round": server_round, "lr": 0.1})
    messages = wrapper.configure_train(
        server_round, state_to_arrays(GLOBAL), config, FakeGrid(NODES)
    )
    return {m.metadata.dst_node_id: m for m in messages}


def client_reply(msg: Message, seed: int, **mod_args: object) -> tuple[Message, RecordDict]:
    """The node's compressed reply through the mod, and the plain reply it started from."""
    plain: list[RecordDict] = []

    def handler(m: Message, _: Context) -> Message:
        plain.append(trained_reply(m, local_step(seed), num_examples=10 * seed))
        return Message(plain[0], reply_to=m)

    node = msg.metadata.dst_node_id
    context = Context(1, node, {"partition-id": node}, RecordDict(), {})
    act_as_node(node)
    reply = compression_mod(**mod_args)(msg, context, handler)  # type: ignore[arg-type]
    act_as_node(0)
    return make_reply(reply.content, node_id=node), plain[0]


def fedavg() -> FedAvg:
    return FedAvg(fraction_train=1.0, min_train_nodes=3, min_available_nodes=3)


def test_decoded_updates_aggregate_like_the_plain_ones_within_quantization_error() -> None:
    wrapper = CompressedUpdates(fedavg(), bits=8)
    messages = configure(wrapper)
    replies, plains = zip(
        *(client_reply(messages[n], seed=i + 1) for i, n in enumerate(NODES)), strict=True
    )
    arrays, _ = wrapper.aggregate_train(1, list(replies))
    plain_arrays, _ = fedavg().aggregate_train(
        1, [make_reply(p, node_id=n) for p, n in zip(plains, NODES, strict=True)]
    )
    assert arrays is not None and plain_arrays is not None
    got, want = arrays_to_state(arrays), arrays_to_state(plain_arrays)
    for name in FLOATS:
        step = torch.stack([arrays_to_state(p[ARRAYS_KEY])[name] for p in plains]) - GLOBAL[name]
        bound = step.abs().amax() / 127 * 1.41 * 1.1  # one int8 step of the coarsest scale
        assert torch.all((got[name] - want[name]).abs() <= bound + 1e-7), name
    assert float(got["bn1.num_batches_tracked"]) == float(GLOBAL["bn1.num_batches_tracked"])
    assert wrapper.round_stats()["compression/rejected"] == 0.0


def test_exact_bytes_and_the_int8_target_on_microbi_convlstm() -> None:
    wrapper = CompressedUpdates(fedavg(), bits=8)
    messages = configure(wrapper)
    replies = [client_reply(messages[n], seed=i + 1)[0] for i, n in enumerate(NODES)]
    sizes = [len(r.content[COMPRESSED_KEY]["payload"]) for r in replies]  # type: ignore[arg-type]
    channels = sum(s[0] for s in FLOATS.values() if len(s) > 1)
    assert sizes == [HEADER_BYTES + 4 + len(FLOATS) + -(-channels // 2) + NUMEL] * 3
    wrapper.aggregate_train(1, replies)
    stats = wrapper.round_stats()
    assert stats["compression/bytes-up"] == sum(sizes)
    assert stats["compression/bytes-up-fp32"] == 3 * (HEADER_BYTES + 4 * NUMEL)
    assert stats["compression/bytes-up-fp32"] / stats["compression/bytes-up"] >= 3.9
    plain_record = state_to_arrays(GLOBAL)  # what an uncompressed client sends
    assert sum(len(a.data) for a in plain_record.values()) / sizes[0] >= 3.9
    assert stats["compression/bytes-down"] == 0.0


def tampered(reply: Message, payload: object) -> Message:
    content = RecordDict(dict(reply.content.items()))
    content[COMPRESSED_KEY] = ConfigRecord({"payload": payload})  # type: ignore[dict-item]
    return make_reply(content, node_id=reply.metadata.src_node_id)


def test_tampered_payloads_are_rejected_counted_and_never_aggregated() -> None:
    wrapper = CompressedUpdates(fedavg(), bits=8)
    messages = configure(wrapper)
    good, plain = client_reply(messages[11], seed=1)
    blob = good.content[COMPRESSED_KEY]["payload"]
    assert isinstance(blob, bytes)
    wrong_shape = {k: torch.zeros(v) for k, v in FLOATS.items()} | {"head.bias": torch.zeros(9)}
    other_schema = to_bytes(encode_update(wrong_shape, CodecConfig(8), np.random.default_rng(0))[0])
    four_bit = to_bytes(
        encode_update({k: torch.zeros(v) for k, v in FLOATS.items()}, CodecConfig(4),
                      np.random.default_rng(0))[0]
    )  # fmt: skip
    huge = bytearray(blob)
    huge[HEADER_BYTES : HEADER_BYTES + 4] = np.float32(3e38).tobytes()
    uncompressed = make_reply(plain, node_id=12)
    stranger = make_reply(good.content, node_id=99)
    bad = [
        tampered(good, blob[:-5]),  # truncated
        tampered(good, other_schema),  # a different model
        tampered(good, four_bit),  # bit width the server did not ask for
        tampered(good, bytes(huge)),  # scales that overflow the model
        tampered(good, "not bytes"),
        uncompressed,
        stranger,
    ]
    arrays, _ = wrapper.aggregate_train(1, [good, *bad])
    stats = wrapper.round_stats()
    assert stats["compression/rejected"] == len(bad)
    assert stats["compression/accepted"] == 1
    reasons = [reason for _, reason in wrapper.round_rejections()]
    assert stats["compression/rejected/bad-payload"] == 5
    assert stats["compression/rejected/not-compressed"] == 1
    assert stats["compression/rejected/unexpected-node"] == 1
    for expected in ("truncated", "schema differs", "bit width", "non-finite", "payload bytes",
                     "no compressed update", "was sent no model"):  # fmt: skip
        assert any(expected in r for r in reasons), expected
    only_good, _ = fedavg().aggregate_train(1, [make_reply(plain, node_id=11)])
    assert arrays is not None and only_good is not None
    got, want = arrays_to_state(arrays), arrays_to_state(only_good)
    assert all(torch.allclose(got[k], want[k].to(got[k].dtype), atol=1e-3) for k in FLOATS)
    assert stats["compression/bytes-up"] == len(blob)  # rejected payloads are not counted


class Recording(FedAvg):
    """FedAvg that keeps the replies it was asked to aggregate."""

    seen: list[Message]

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        self.seen = list(replies)
        updates = [m for m in self.seen if not m.has_error() and "decline" not in m.content]
        return super().aggregate_train(server_round, updates)


def test_declines_and_errors_pass_and_counters_reset_each_round() -> None:
    inner = Recording(fraction_train=1.0, min_train_nodes=3, min_available_nodes=3)
    wrapper = CompressedUpdates(inner, bits=8)
    messages = configure(wrapper)
    good, _ = client_reply(messages[11], seed=1)
    decline = make_reply(decline_reply("no plan fits", ClientIdentity("u12", "mcu")), node_id=12)
    error = make_reply(node_id=13, error_reason="crash")
    wrapper.aggregate_train(1, [good, decline, error, tampered(good, b"")])
    assert inner.seen[1:] == [decline, error] and ARRAYS_KEY in inner.seen[0].content
    assert wrapper.round_stats()["compression/rejected"] == 1.0
    configure(wrapper, server_round=2)
    assert wrapper.round_stats()["compression/rejected"] == 0.0
    assert wrapper.round_stats()["compression/bytes-up"] == 0.0


def test_int8_downlink_is_decoded_by_the_mod_and_deltas_refer_to_it() -> None:
    wrapper = CompressedUpdates(fedavg(), bits=8, downlink_bits=8)
    messages = configure(wrapper)
    content = messages[11].content
    assert set(content.array_records[ARRAYS_KEY]) == {"bn1.num_batches_tracked",
                                                      "bn2.num_batches_tracked"}  # fmt: skip
    down = len(content[COMPRESSED_KEY]["payload"])  # type: ignore[arg-type]
    assert wrapper.round_stats()["compression/bytes-down"] == 3 * down
    assert down < (HEADER_BYTES + 4 * NUMEL) / 3.9
    replies, plains = zip(
        *(client_reply(messages[n], i + 1) for i, n in enumerate(NODES)),
        strict=True,
    )
    received = arrays_to_state(plains[0][ARRAYS_KEY])  # the client trained from the int8 model
    arrays, _ = wrapper.aggregate_train(1, list(replies))
    assert wrapper.round_stats()["compression/rejected"] == 0.0 and arrays is not None
    got = arrays_to_state(arrays)
    for name in FLOATS:
        # global error: half an int8 step of the downlink, plus the uplink error
        assert torch.allclose(got[name], GLOBAL[name], atol=0.05), name
    assert not torch.equal(received["conv1.weight"], GLOBAL["conv1.weight"])


def run_with_devices(devices: dict[int, str]) -> RunInfo:
    nodes = {n: NodeInfo(n, n, f"u{n}", device, 1.0, 100) for n, device in devices.items()}
    kinds = {"nrf52840": "mcu", "pixel_watch": "watch", "android_phone": "phone"}
    return RunInfo("run", 0, Path("."), FleetDirectory(nodes), device_kinds=kinds)


def test_mcus_download_int8_while_other_devices_get_float32() -> None:
    run = run_with_devices({11: "nrf52840", 12: "android_phone", 13: "pixel_watch"})
    wrapper = CompressedUpdates(fedavg(), run=run, bits=8, downlink_bits_by_kind={"mcu": 8})
    messages = configure(wrapper)
    assert COMPRESSED_KEY in messages[11].content.config_records
    assert messages[11].content[COMPRESSED_KEY]["bits"] == 8
    for plain in (12, 13):
        assert COMPRESSED_KEY not in messages[plain].content.config_records
        assert arrays_to_state(messages[plain].content[ARRAYS_KEY]).keys() == GLOBAL.keys()
    down = len(messages[11].content[COMPRESSED_KEY]["payload"])  # type: ignore[arg-type]
    assert wrapper.round_stats()["compression/bytes-down"] == down
    replies, plains = zip(*(client_reply(messages[n], i + 1) for i, n in enumerate(NODES)),
                          strict=True)  # fmt: skip
    mcu_model = arrays_to_state(plains[0][ARRAYS_KEY])
    assert not torch.equal(mcu_model["conv1.weight"], GLOBAL["conv1.weight"])
    arrays, _ = wrapper.aggregate_train(1, list(replies))
    assert wrapper.round_stats()["compression/rejected"] == 0.0 and arrays is not None


def test_a_node_of_unknown_kind_is_a_clear_error() -> None:
    run = run_with_devices({11: "nrf52840", 12: "android_phone"})  # node 13 never enrolled
    wrapper = CompressedUpdates(fedavg(), run=run, downlink_bits_by_kind={"mcu": 8})
    with pytest.raises(ValueError, match="node 13 has no known device kind"):
        configure(wrapper)


def test_bad_bits_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="bits=3"):
        CompressedUpdates(fedavg(), bits=3)
    with pytest.raises(ValueError, match="bits=16"):
        CompressedUpdates(fedavg(), downlink_bits=16)
    with pytest.raises(ValueError, match="bits=5"):
        CompressedUpdates(fedavg(), run=run_with_devices({}), downlink_bits_by_kind={"mcu": 5})
    with pytest.raises(ValueError, match="needs the run"):
        CompressedUpdates(fedavg(), downlink_bits_by_kind={"mcu": 8})


def test_passes_evaluation_through() -> None:
    wrapper = CompressedUpdates(fedavg())
    arrays = state_to_arrays(GLOBAL)
    messages = list(wrapper.configure_evaluate(1, arrays, ConfigRecord(), FakeGrid(NODES)))
    assert len(messages) == 3 and ARRAYS_KEY in messages[0].content
