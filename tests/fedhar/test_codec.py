"""Update codec: unbiased rounding, error bounds, top-k, error feedback, strict wire format."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhar.codec import (
    CodecConfig,
    EncodedUpdate,
    PayloadError,
    decode_state,
    decode_update,
    encode_state,
    encode_update,
    from_bytes,
    payload_bytes,
    to_bytes,
)


def make_delta(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 6, 5, generator=g),
        "conv.bias": torch.randn(8, generator=g) * 0.1,
        "head.weight": torch.randn(4, 8, generator=g) * 3,
    }


def shapes(d: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in d.items()}


def scale_of(enc: EncodedUpdate, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-element scale broadcast to the tensor's shape."""
    t = next(t for t in enc.tensors if t.name == name)
    s = torch.from_numpy(t.scales)
    return s.reshape(-1, *[1] * (len(shape) - 1)).expand(shape) if len(shape) > 1 else s


def test_stochastic_rounding_is_unbiased() -> None:
    # Each decoded value lies in [x - s, x + s) on a grid cell of width s, so by Hoeffding the
    # mean of n draws is within s * sqrt(ln(2m / delta) / (2n)) of x for all m entries at once
    # with probability >= 1 - delta. Deterministic rounding would miss this bound.
    delta = {"w": torch.linspace(-1.0, 1.0, 64).reshape(4, 16) * 0.37}
    cfg, n, fail_prob = CodecConfig(bits=2), 4000, 1e-6
    rng = np.random.default_rng(1)
    total = torch.zeros(4, 16, dtype=torch.float64)
    for _ in range(n):
        enc, _ = encode_update(delta, cfg, rng)
        total += decode_update(enc, shapes(delta))["w"].double()
    scale = scale_of(enc, "w", (4, 16)).double()
    bound = scale * math.sqrt(math.log(2 * 64 / fail_prob) / (2 * n))
    assert torch.all((total / n - delta["w"].double()).abs() <= bound)
    rounded = torch.round(delta["w"].double() / scale) * scale
    assert torch.any((rounded - delta["w"].double()).abs() > bound)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_round_trip_error_within_one_step(bits: int) -> None:
    delta = make_delta()
    enc, _ = encode_update(delta, CodecConfig(bits=bits), np.random.default_rng(0))
    out = decode_update(from_bytes(to_bytes(enc)), shapes(delta))
    for name, x in delta.items():
        amax = x.abs().amax(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x.abs().max()
        expected_scale = amax / (2 ** (bits - 1) - 1)
        scale = scale_of(enc, name, tuple(x.shape))
        assert torch.allclose(
            scale.amax(dim=tuple(range(1, x.dim())) if x.dim() > 1 else 0), expected_scale
        )
        assert torch.all((out[name] - x).abs() <= scale * (1 + 1e-5))


def test_error_shrinks_with_bits() -> None:
    delta = make_delta()
    errors = []
    for bits in (2, 4, 8, 32):
        enc, _ = encode_update(delta, CodecConfig(bits=bits), np.random.default_rng(0))
        out = decode_update(enc, shapes(delta))
        errors.append(max((out[k] - delta[k]).abs().max().item() for k in delta))
    assert errors[0] > errors[1] > errors[2] > errors[3] == 0.0


def test_fp32_is_exact_and_int8_is_about_four_times_smaller() -> None:
    delta = {"w": torch.randn(64, 1024), "b": torch.randn(64)}
    raw, _ = encode_update(delta, CodecConfig(bits=32), np.random.default_rng(0))
    q8, _ = encode_update(delta, CodecConfig(bits=8), np.random.default_rng(0))
    q4, _ = encode_update(delta, CodecConfig(bits=4), np.random.default_rng(0))
    q2, _ = encode_update(delta, CodecConfig(bits=2), np.random.default_rng(0))
    assert torch.equal(decode_update(raw, shapes(delta))["w"], delta["w"])
    values = [next(t for t in e.tensors if t.name == "w").values.nbytes for e in (q8, q4, q2)]
    assert values == [65536, 65536 // 2, 65536 // 4]  # really 8, 4, 2 bits per value
    assert payload_bytes(raw) / payload_bytes(q8) >= 3.9


def test_topk_keeps_largest_magnitudes() -> None:
    x = torch.randn(10, 20, generator=torch.Generator().manual_seed(3))
    enc, _ = encode_update(
        {"w": x}, CodecConfig(bits=32, topk_fraction=0.1), np.random.default_rng(0)
    )
    kept = enc.tensors[0].indices
    assert kept is not None and kept.dtype == np.uint16 and kept.size == 20
    assert set(kept.tolist()) == set(torch.topk(x.abs().flatten(), 20).indices.tolist())
    out = decode_update(enc, {"w": (10, 20)})["w"].flatten()
    assert torch.equal(out[kept.astype(np.int64)], x.flatten()[kept.astype(np.int64)])
    assert int((out != 0).sum()) == 20


def test_error_feedback_tracks_sum_of_deltas() -> None:
    cfg, rng = CodecConfig(bits=2, topk_fraction=0.2, error_feedback=True), np.random.default_rng(0)
    true_sum = torch.zeros(6, 10)
    sent_sum = torch.zeros(6, 10)
    residual = None
    for r in range(30):
        delta = {"w": torch.randn(6, 10, generator=torch.Generator().manual_seed(r))}
        enc, residual = encode_update(delta, cfg, rng, residual)
        sent_sum += decode_update(enc, {"w": (6, 10)})["w"]
        true_sum += delta["w"]
        assert residual is not None
        # invariant: what was sent plus what is still owed equals the true total
        assert torch.allclose(sent_sum + residual["w"], true_sum, atol=1e-4)
    assert residual["w"].abs().max() < 10.0  # bounded, not growing with the rounds
    no_ef, none = encode_update(delta, dataclasses.replace(cfg, error_feedback=False), rng)
    assert none is None and no_ef.kind == "update"


def test_state_downlink_is_deterministic_int8() -> None:
    state = make_delta(5)
    a, b = encode_state(state, 8), encode_state(state, 8)
    assert to_bytes(a) == to_bytes(b)
    out = decode_state(from_bytes(to_bytes(a)), shapes(state), bits=8)
    for name, x in state.items():
        assert torch.all((out[name] - x).abs() <= scale_of(a, name, tuple(x.shape)) / 2 + 1e-7)
    with pytest.raises(PayloadError, match="encoded update"):
        decode_update(a, shapes(state))


def test_bad_configs_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"bits=3 .*\(2, 4, 8, 32\)"):
        CodecConfig(bits=3)
    with pytest.raises(ValueError, match="topk_fraction"):
        CodecConfig(topk_fraction=0.0)
    with pytest.raises(ValueError, match="non-float"):
        encode_update({"n": torch.tensor(3)}, CodecConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="error_feedback"):
        encode_update(make_delta(), CodecConfig(), np.random.default_rng(0), make_delta())


def test_payload_bytes_is_exact() -> None:
    for cfg in (CodecConfig(32), CodecConfig(8, 0.1), CodecConfig(4), CodecConfig(2, 0.5)):
        enc, _ = encode_update(make_delta(), cfg, np.random.default_rng(0))
        assert payload_bytes(enc) == len(to_bytes(enc))


def test_decode_rejects_mismatches() -> None:
    delta = make_delta()
    enc, _ = encode_update(delta, CodecConfig(bits=4), np.random.default_rng(0))
    with pytest.raises(PayloadError, match="missing") as err:
        decode_update(enc, {**shapes(delta), "extra.weight": (2, 2)})
    assert "extra.weight" in err.value.reason
    with pytest.raises(PayloadError, match="unexpected"):
        decode_update(enc, {k: v for k, v in shapes(delta).items() if k != "conv.bias"})
    with pytest.raises(PayloadError, match="shape"):
        decode_update(enc, {**shapes(delta), "conv.weight": (8, 6, 3)})
    with pytest.raises(PayloadError, match="bit width"):
        decode_update(enc, shapes(delta), bits=8)
    t = enc.tensors[0]
    variants = {
        "finite": dataclasses.replace(t, scales=np.full_like(t.scales, np.nan)),
        "scales": dataclasses.replace(t, scales=t.scales[:-1]),
        "packed bytes": dataclasses.replace(t, values=t.values[:-1]),
        "bit width": dataclasses.replace(t, bits=5),
    }
    for reason, bad in variants.items():
        broken = EncodedUpdate("update", (bad, *enc.tensors[1:]))
        with pytest.raises(PayloadError, match=reason):
            decode_update(broken, shapes(delta))


def _rewrite_meta(blob: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    _, _, n = struct.unpack_from("<4sHI", blob)
    meta = json.loads(blob[10 : 10 + n])
    new = json.dumps(edit(meta)).encode()
    return blob[:6] + struct.pack("<I", len(new)) + new + blob[10 + n :]


def test_malformed_payloads_raise_payload_error() -> None:
    delta = make_delta()
    blob = to_bytes(
        encode_update(delta, CodecConfig(bits=8, topk_fraction=0.5), np.random.default_rng(0))[0]
    )
    nan_scale = bytearray(blob)
    _, _, n = struct.unpack_from("<4sHI", blob)
    nan_scale[10 + n : 14 + n] = struct.pack("<f", float("nan"))

    def rename(m: dict) -> dict:
        m["tensors"][0]["name"] = "other"
        return m

    def reshape(m: dict) -> dict:
        m["tensors"][0]["shape"] = [8, 6, 4]
        return m

    cases = {
        "truncated": blob[:-3],
        "trailing": blob + b"\0",
        "header flipped": b"XHQC" + blob[4:],
        "version": blob[:4] + struct.pack("<H", 9) + blob[6:],
        "empty": b"",
        "garbage json": blob[:10] + b"}" + blob[11:],
        "nan scale": bytes(nan_scale),
        "shape": _rewrite_meta(blob, reshape),
    }
    for label, bad in cases.items():
        with pytest.raises(PayloadError) as err:
            decode_update(from_bytes(bad), shapes(delta))
        assert err.value.reason, label
    with pytest.raises(PayloadError, match="names differ"):
        decode_update(from_bytes(_rewrite_meta(blob, rename)), shapes(delta))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_corruption_only_raises_payload_error(data: st.DataObject) -> None:
    delta = make_delta()
    blob = bytearray(
        to_bytes(
            encode_update(delta, CodecConfig(bits=4, topk_fraction=0.3), np.random.default_rng(0))[
                0
            ]
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        decode_update(from_bytes(bytes(blob[:cut])), shapes(delta))
    except PayloadError as err:
        assert err.reason
