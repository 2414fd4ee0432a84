"""Codec wire format: exact sizes, schema hash, strict parsing of tampered payloads."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhar.transport.codec import CodecConfig, PayloadError, decode_update, encode_update
from fedhar.transport.payload import (
    HEADER_BYTES,
    from_bytes,
    payload_bytes,
    schema_from_bytes,
    schema_hash,
    schema_to_bytes,
    to_bytes,
)


def make_delta() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 6, 5, generator=g),
        "conv.bias": torch.randn(8, generator=g) * 0.1,
        "head.weight": torch.randn(4, 8, generator=g) * 3,
    }


SHAPES = {"conv.weight": (8, 6, 5), "conv.bias": (8,), "head.weight": (4, 8)}


def blob_of(cfg: CodecConfig) -> bytes:
    return to_bytes(encode_update(make_delta(), cfg, np.random.default_rng(0))[0])


@pytest.mark.parametrize(
    "cfg", [CodecConfig(32), CodecConfig(8, 0.1), CodecConfig(4), CodecConfig(2, 0.5)]
)
def test_payload_bytes_is_exact_and_round_trips(cfg: CodecConfig) -> None:
    enc, _ = encode_update(make_delta(), cfg, np.random.default_rng(0))
    blob = to_bytes(enc)
    assert payload_bytes(enc) == len(blob)
    again = decode_update(from_bytes(blob, SHAPES), SHAPES, bits=cfg.bits)
    first = decode_update(enc, SHAPES)
    assert all(torch.equal(again[k], first[k]) for k in SHAPES)


def test_layout_costs_one_byte_per_tensor_and_half_a_byte_per_channel() -> None:
    numel = 8 * 6 * 5 + 8 + 4 * 8
    assert len(blob_of(CodecConfig(32))) == HEADER_BYTES + 4 * numel
    # base scale, 3 tensor codes, 12 channel codes in 6 bytes, one byte per int8 code
    assert len(blob_of(CodecConfig(8))) == HEADER_BYTES + 4 + 3 + 6 + numel
    assert len(blob_of(CodecConfig(2))) == HEADER_BYTES + 4 + 3 + 6 + -(-numel * 2 // 8)


def test_schema_hash_depends_on_names_and_shapes_not_order() -> None:
    assert schema_hash(SHAPES) == schema_hash(dict(reversed(SHAPES.items())))
    assert schema_hash(SHAPES) != schema_hash({**SHAPES, "conv.bias": (9,)})
    assert schema_from_bytes(schema_to_bytes(SHAPES)) == SHAPES
    for bad in (b"{}", b"[[1, [2]]]", b'[["b", [1]], ["a", [1]]]', b"\xff"):
        with pytest.raises(PayloadError, match="schema"):
            schema_from_bytes(bad)


def test_other_model_is_rejected_with_both_hashes() -> None:
    other = {**SHAPES, "head.weight": (5, 8)}
    with pytest.raises(PayloadError, match="schema differs") as err:
        from_bytes(blob_of(CodecConfig(8)), other)
    assert schema_hash(other).hex() in err.value.reason
    assert schema_hash(SHAPES).hex() in err.value.reason


def test_malformed_payloads_raise_payload_error() -> None:
    blob = blob_of(CodecConfig(bits=8, topk_fraction=0.5))
    nan_base = bytearray(blob)
    nan_base[HEADER_BYTES : HEADER_BYTES + 4] = struct.pack("<f", float("nan"))
    big_count = bytearray(blob)
    counts_at = HEADER_BYTES + 4 + 3 + 6
    big_count[counts_at : counts_at + 4] = struct.pack("<I", 10**6)
    cases = {
        "truncated": blob[:-3],
        "trailing": blob + b"\0",
        "bad magic": b"XHQC" + blob[4:],
        "unsupported payload version": blob[:4] + struct.pack("<H", 9) + blob[6:],
        "shorter than the header": b"",
        "bad header": blob[:7] + b"\x03" + blob[8:],
        "base scale": bytes(nan_base),
        "kept count": bytes(big_count),
    }
    for reason, bad in cases.items():
        with pytest.raises(PayloadError, match=reason):
            from_bytes(bad, SHAPES)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_corruption_only_raises_payload_error(data: st.DataObject) -> None:
    blob = bytearray(blob_of(CodecConfig(bits=4, topk_fraction=0.3)))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        decode_update(from_bytes(bytes(blob[:cut]), SHAPES), SHAPES)
    except PayloadError as err:
        assert err.reason
