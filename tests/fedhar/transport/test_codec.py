"""Update codec: unbiased rounding, error bounds, log-coded scales, top-k, error feedback."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedhar.models import build_model
from fedhar.transport.codec import (
    CodecConfig,
    EncodedUpdate,
    PayloadError,
    channel_scales,
    decode_state,
    decode_update,
    encode_state,
    encode_update,
)
from fedhar.transport.payload import from_bytes, payload_bytes, to_bytes


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
    """Per-element decoded scale broadcast to the tensor's shape."""
    t = next(t for t in enc.tensors if t.name == name)
    s = torch.from_numpy(channel_scales(enc, t))
    return (
        s.reshape(-1, *[1] * (len(shape) - 1)).expand(shape) if len(shape) > 1 else s.expand(shape)
    )


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
def test_round_trip_error_within_one_step_and_scales_never_clip(bits: int) -> None:
    delta = make_delta()
    enc, _ = encode_update(delta, CodecConfig(bits=bits), np.random.default_rng(0))
    out = decode_update(enc, shapes(delta))
    qmax = 2 ** (bits - 1) - 1
    for name, x in delta.items():
        dims = tuple(range(1, x.dim()))
        amax = x.abs().amax(dim=dims) if x.dim() > 1 else x.abs().max().reshape(1)
        scale = scale_of(enc, name, tuple(x.shape)).double()
        per_channel = scale.reshape(len(amax), -1)[:, 0] if x.dim() > 1 else scale[:1]
        exact = amax.double() / qmax
        # log codes round the scale up: never clips, at most 2^(1/8) * 2^(1/2) coarser
        assert torch.all(per_channel >= exact)
        assert torch.all(per_channel <= exact * 2 ** (1 / 8 + 1 / 2) * (1 + 1e-9))
        assert torch.all((out[name] - x).abs() <= scale * (1 + 1e-6))


def test_channel_scales_follow_each_channel() -> None:
    # rows whose magnitudes differ by 64x get their own scale, not the tensor's largest
    x = torch.ones(8, 5) * torch.logspace(0, -6, 8, base=2).reshape(8, 1)
    enc, _ = encode_update({"w": x}, CodecConfig(bits=8), np.random.default_rng(0))
    scales = channel_scales(enc, enc.tensors[0])
    assert scales[0] / scales[-1] > 32
    out = decode_update(enc, {"w": (8, 5)})["w"]
    assert torch.allclose(out, x, rtol=0.02)


def test_error_shrinks_with_bits() -> None:
    delta = make_delta()
    errors = []
    for bits in (2, 4, 8, 32):
        enc, _ = encode_update(delta, CodecConfig(bits=bits), np.random.default_rng(0))
        out = decode_update(enc, shapes(delta))
        errors.append(max((out[k] - delta[k]).abs().max().item() for k in delta))
    assert errors[0] > errors[1] > errors[2] > errors[3] == 0.0


def test_int8_transport_is_at_least_3_9x_smaller_on_microbi_convlstm() -> None:
    state = build_model("microbi_convlstm", in_channels=6, num_classes=8).state_dict()
    g = torch.Generator().manual_seed(0)
    delta = {
        k: 0.01 * torch.randn(v.shape, generator=g)
        for k, v in state.items()
        if v.is_floating_point()
    }
    raw, _ = encode_update(delta, CodecConfig(bits=32), np.random.default_rng(0))
    sizes = {}
    for bits in (8, 4, 2):
        enc, _ = encode_update(delta, CodecConfig(bits=bits), np.random.default_rng(0))
        sizes[bits] = payload_bytes(enc)
    assert torch.equal(decode_update(raw, shapes(delta))["conv1.weight"], delta["conv1.weight"])
    numel = sum(v.numel() for v in delta.values())
    assert sizes[8] - numel < 0.025 * numel  # scales and header: about 2% of the codes
    assert payload_bytes(raw) / sizes[8] >= 3.9  # same framing, raw float32 values
    assert payload_bytes(raw) / sizes[4] >= 7.5 and payload_bytes(raw) / sizes[2] >= 14.0


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


def test_error_feedback_keeps_scalar_entries_across_rounds() -> None:
    """0-d entries (a QAT observer's range, a step counter) keep a 0-d residual."""
    cfg, rng = CodecConfig(bits=8, error_feedback=True), np.random.default_rng(0)
    residual = None
    sent, true = 0.0, 0.0
    for r in range(3):
        delta = {"w": torch.randn(4, 3), "scale": torch.tensor(0.37 + r)}
        enc, residual = encode_update(delta, cfg, rng, residual)
        assert residual is not None and residual["scale"].shape == ()
        sent += float(decode_update(enc, {"w": (4, 3), "scale": ()})["scale"])
        true += float(delta["scale"])
        assert sent + float(residual["scale"]) == pytest.approx(true, abs=1e-5)


def test_state_downlink_is_deterministic_int8() -> None:
    state = make_delta(5)
    a, b = encode_state(state, 8), encode_state(state, 8)
    assert to_bytes(a) == to_bytes(b)
    out = decode_state(from_bytes(to_bytes(a), shapes(state)), shapes(state), bits=8)
    for name, x in state.items():
        assert torch.all((out[name] - x).abs() <= scale_of(a, name, tuple(x.shape)) / 2 + 1e-7)
    with pytest.raises(PayloadError, match="encoded update"):
        decode_update(a, shapes(state))


def test_all_zero_delta_round_trips() -> None:
    delta = {k: torch.zeros_like(v) for k, v in make_delta().items()}
    enc, _ = encode_update(delta, CodecConfig(bits=4), np.random.default_rng(0))
    assert enc.base_scale == 0.0
    out = decode_update(from_bytes(to_bytes(enc), shapes(delta)), shapes(delta))
    assert all(torch.equal(out[k], delta[k]) for k in delta)


def test_bad_configs_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"bits=3 .*\(2, 4, 8, 32\)"):
        CodecConfig(bits=3)
    with pytest.raises(ValueError, match="topk_fraction"):
        CodecConfig(topk_fraction=0.0)
    with pytest.raises(ValueError, match="non-float"):
        encode_update({"n": torch.tensor(3)}, CodecConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="error_feedback"):
        encode_update(make_delta(), CodecConfig(), np.random.default_rng(0), make_delta())


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
    with pytest.raises(PayloadError, match="base scale"):
        decode_update(dataclasses.replace(enc, base_scale=float("nan")), shapes(delta))
    t = next(t for t in enc.tensors if t.name == "conv.weight")
    variants = {
        "channel scale codes": dataclasses.replace(t, channel_codes=t.channel_codes[:-1]),
        "tensor scale code": dataclasses.replace(t, scale_code=256),
        "codes": dataclasses.replace(t, values=t.values[:-1]),
        "symmetric": dataclasses.replace(t, values=np.full_like(t.values, 15)),
    }
    for reason, bad in variants.items():
        tensors = tuple(bad if u.name == t.name else u for u in enc.tensors)
        with pytest.raises(PayloadError, match=reason):
            decode_update(dataclasses.replace(enc, tensors=tensors), shapes(delta))
