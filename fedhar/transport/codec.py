"""Compressed model-update codec: per-channel quantization with log-coded scales.

Uplink: the client's delta (local - global) is quantized per output channel with unbiased
stochastic rounding to 8, 4 or 2 bits; optional top-k sparsification and an error-feedback
residual kept by the client. 32 bits is a raw float32 passthrough. Downlink: `encode_state`
quantizes a state dict with deterministic rounding (MCU clients download int8 models).

Scales cost about 2% of an int8 payload: one float32 base scale per payload, a 1-byte log-code
per tensor (tensor scale = base * 2^(-code/8)) and a 4-bit log-code per output channel (channel
scale = tensor scale * 2^(-code/2)). Codes are rounded towards larger scales, so no value ever
clips and stochastic rounding stays unbiased; the price is a grid at most 1.09 * 1.41 times
coarser than an exact float32 scale would give. `fedhar.transport.payload` holds the wire format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SUPPORTED_BITS = (2, 4, 8, 32)
KINDS = ("update", "state")
TENSOR_STEPS, TENSOR_CODES = 8, 256  # 1/8-octave tensor scale steps over 32 octaves
CHANNEL_STEPS, CHANNEL_CODES = 2, 16  # half-octave channel steps in 4 bits (7.5 octaves)
Schema = Mapping[str, Sequence[int]]  # tensor name -> shape


class PayloadError(ValueError):
    """A payload that does not match what the receiver expects; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CodecConfig:
    """Update compression settings.

    Attributes
    ----------
    bits : 2, 4, 8 (quantized) or 32 (raw float32).
    topk_fraction : share of each tensor's largest-magnitude entries sent; 1.0 sends all.
    error_feedback : keep what compression dropped and add it to the next round's delta.
    """

    bits: int = 8  # about 4x fewer bytes than float32 at negligible error for FedAvg
    topk_fraction: float = 1.0
    error_feedback: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction={self.topk_fraction} must be in (0, 1]")


@dataclass(frozen=True)
class EncodedTensor:
    """One compressed tensor: scale codes, codes (or float32 values), optional indices."""

    name: str
    shape: tuple[int, ...]
    scale_code: int  # tensor scale = base * 2^(-scale_code/8); 0 at 32 bits
    channel_codes: np.ndarray  # uint8 (shape[0],) for matrices and kernels, else empty
    values: np.ndarray  # uint8 codes (one per kept entry), or float32 values at 32 bits
    indices: np.ndarray | None  # sorted flat positions (uint16/uint32); None means dense


@dataclass(frozen=True)
class EncodedUpdate:
    """A compressed update ("update") or downlink model ("state"), tensors sorted by name."""

    kind: str
    bits: int
    base_scale: float  # float32-exact; 0.0 at 32 bits
    tensors: tuple[EncodedTensor, ...]


def check_bits(bits: int) -> None:
    """Raise ValueError for an unsupported bit width."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; use one of {SUPPORTED_BITS}")


def num_channels(shape: Sequence[int], bits: int) -> int:
    """Channel codes per tensor: one per output channel (dim 0) of matrices and kernels."""
    return shape[0] if bits < 32 and len(shape) >= 2 else 0


def index_dtype(numel: int) -> np.dtype:
    return np.dtype("<u2") if numel <= 2**16 else np.dtype("<u4")


def _channel_of(positions: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Output channel of each flat position (0 for vectors)."""
    if len(shape) < 2:
        return np.zeros(positions.shape, dtype=np.int64)
    return positions // max(1, math.prod(shape[1:]))


def _levels(top: float, codes: np.ndarray, steps: int) -> np.ndarray:
    return top * np.exp2(-codes.astype(np.float64) / steps)


def _codes_covering(top: float, need: np.ndarray, steps: int, count: int) -> np.ndarray:
    """Largest codes whose level top * 2^(-code/steps) is still >= need (so nothing clips)."""
    ratio = need / top if top > 0 else np.zeros_like(need)
    with np.errstate(divide="ignore"):
        codes = np.clip(
            np.nan_to_num(np.floor(-np.log2(ratio) * steps), posinf=count), 0, count - 1
        )
    while np.any(low := (_levels(top, codes, steps) < need) & (codes > 0)):  # float error
        codes[low] -= 1
    return codes.astype(np.uint8)


def channel_scales(encoded: EncodedUpdate, t: EncodedTensor) -> np.ndarray:
    """Decoded scale per channel of `t` (one entry for vectors).  # float64 (C,)"""
    tensor = _levels(encoded.base_scale, np.array([t.scale_code]), TENSOR_STEPS)[0]
    codes = t.channel_codes if t.channel_codes.size else np.zeros(1, np.uint8)
    return _levels(tensor, codes, CHANNEL_STEPS)


def _sparsify(flat: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The kept entries and their sorted flat positions (None when all are kept)."""
    if fraction >= 1.0:
        return flat, None
    k = math.ceil(fraction * flat.size)
    top = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :] if k else np.zeros(0)
    indices = np.sort(top).astype(index_dtype(flat.size))
    return flat[indices.astype(np.int64)], indices


def _quantize(
    values: np.ndarray,  # (K,) kept float64 entries
    channel: np.ndarray,  # (K,) output channel of each entry
    need: np.ndarray,  # (C,) smallest scale per channel that does not clip
    base: float,
    bits: int,
    rng: np.random.Generator | None,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Tensor scale code, channel scale codes and value codes of one tensor."""
    qmax = 2 ** (bits - 1) - 1
    code = int(_codes_covering(base, need.max(keepdims=True), TENSOR_STEPS, TENSOR_CODES)[0])
    scale = float(_levels(base, np.array([code]), TENSOR_STEPS)[0])
    channel_codes = _codes_covering(scale, need, CHANNEL_STEPS, CHANNEL_CODES)
    s = _levels(scale, channel_codes, CHANNEL_STEPS)[channel]
    v = np.divide(values, s, out=np.zeros_like(values), where=s > 0)  # within [-qmax, qmax]
    if rng is None:
        q = np.rint(v)
    else:
        low = np.floor(v)
        q = low + (rng.random(v.shape) < v - low)  # E[q] = v: unbiased
    return code, channel_codes, (np.clip(q, -qmax, qmax) + qmax).astype(np.uint8)


def _encode(
    kind: str,
    arrays: Mapping[str, np.ndarray],
    bits: int,
    fraction: float,
    rng: np.random.Generator | None,
) -> EncodedUpdate:
    """Quantize float64 arrays; rng=None rounds to nearest, else stochastically (unbiased)."""
    names = sorted(arrays)
    kept = {n: _sparsify(arrays[n].reshape(-1), fraction) for n in names}
    if bits == 32:
        raw = tuple(
            EncodedTensor(n, arrays[n].shape, 0, np.zeros(0, np.uint8), v.astype("<f4"), idx)
            for n, (v, idx) in kept.items()
        )
        return EncodedUpdate(kind, bits, 0.0, raw)
    qmax = 2 ** (bits - 1) - 1
    need: dict[str, np.ndarray] = {}
    channel: dict[str, np.ndarray] = {}
    for n, (values, idx) in kept.items():
        shape = arrays[n].shape
        positions = np.arange(values.size) if idx is None else idx.astype(np.int64)
        channel[n] = _channel_of(positions, shape)
        amax = np.zeros(max(1, num_channels(shape, bits)))
        np.maximum.at(amax, channel[n], np.abs(values))
        need[n] = amax / qmax
    top = max((float(a.max()) for a in need.values()), default=0.0)
    base = np.float32(top)
    if float(base) < top:  # float32 rounding must not shrink the largest scale
        base = np.nextafter(base, np.float32(np.inf))
    tensors = []
    for n, (values, idx) in kept.items():
        code, channel_codes, codes = _quantize(values, channel[n], need[n], float(base), bits, rng)
        if not num_channels(arrays[n].shape, bits):
            channel_codes = np.zeros(0, np.uint8)  # vectors: the tensor scale alone
        tensors.append(EncodedTensor(n, arrays[n].shape, code, channel_codes, codes, idx))
    return EncodedUpdate(kind, bits, float(base), tuple(tensors))


def _decode_tensor(encoded: EncodedUpdate, t: EncodedTensor) -> np.ndarray:
    """Dense float32 array of a validated tensor."""
    numel = math.prod(t.shape)
    if encoded.bits == 32:
        kept = t.values.astype(np.float32)
    else:
        qmax = 2 ** (encoded.bits - 1) - 1
        count = t.values.size
        positions = np.arange(count) if t.indices is None else t.indices.astype(np.int64)
        scales = channel_scales(encoded, t)[_channel_of(positions, t.shape)]
        kept = ((t.values.astype(np.float64) - qmax) * scales).astype(np.float32)
    if t.indices is None:
        return kept.reshape(t.shape)
    out = np.zeros(numel, dtype=np.float32)
    out[t.indices.astype(np.int64)] = kept
    return out.reshape(t.shape)


def _as_arrays(tensors: Mapping[str, Tensor], what: str) -> dict[str, np.ndarray]:
    bad = [n for n, t in tensors.items() if not torch.is_floating_point(t)]
    if bad:
        raise ValueError(f"{what} has non-float tensors {bad}; drop integer buffers first")
    return {n: t.detach().cpu().double().numpy() for n, t in tensors.items()}


def encode_update(
    delta: Mapping[str, Tensor],
    cfg: CodecConfig,
    rng: np.random.Generator,
    residual: Mapping[str, Tensor] | None = None,
) -> tuple[EncodedUpdate, dict[str, Tensor] | None]:
    """Compress a client delta; returns the update and the new error-feedback residual.

    With `cfg.error_feedback` the residual (None in the first round) is added before
    compression and the new residual is what compression dropped; otherwise it is None.
    """
    if residual is not None and not cfg.error_feedback:
        raise ValueError("a residual was passed but cfg.error_feedback is False")
    arrays = _as_arrays(delta, "delta")
    if residual is not None:
        if set(residual) != set(arrays):
            raise ValueError("residual names differ from the delta's; reset it to None")
        for name, r in residual.items():
            arrays[name] = np.asarray(arrays[name] + r.detach().cpu().double().numpy())
    encoded = _encode("update", arrays, cfg.bits, cfg.topk_fraction, rng)
    if not cfg.error_feedback:
        return encoded, None
    new_residual = {
        t.name: torch.from_numpy(
            np.asarray(arrays[t.name] - _decode_tensor(encoded, t), dtype=np.float32)
        )  # np.asarray: 0-d entries stay arrays, not numpy scalars
        for t in encoded.tensors
    }
    return encoded, new_residual


def encode_state(state: Mapping[str, Tensor], bits: int) -> EncodedUpdate:
    """Compress a float state dict for the downlink with deterministic round-to-nearest."""
    check_bits(bits)
    return _encode("state", _as_arrays(state, "state"), bits, 1.0, None)


def _validate_tensor(t: EncodedTensor, bits: int, sparse: bool) -> None:
    numel = math.prod(t.shape)
    count = numel
    if (t.indices is not None) != sparse:
        raise PayloadError(f"{t.name}: every tensor or none must carry indices")
    if t.indices is not None:
        idx = t.indices
        if idx.dtype != index_dtype(numel) or idx.ndim != 1 or idx.size > numel:
            raise PayloadError(f"{t.name}: indices must be 1-D {index_dtype(numel)}")
        if idx.size and (idx[-1] >= numel or np.any(np.diff(idx.astype(np.int64)) <= 0)):
            raise PayloadError(f"{t.name}: indices must be increasing and below {numel}")
        count = idx.size
    want = num_channels(t.shape, bits)
    codes = t.channel_codes
    if codes.dtype != np.uint8 or codes.shape != (want,) or np.any(codes >= CHANNEL_CODES):
        raise PayloadError(f"{t.name}: expected {want} channel scale codes below {CHANNEL_CODES}")
    if type(t.scale_code) is not int or not 0 <= t.scale_code < TENSOR_CODES:
        raise PayloadError(f"{t.name}: tensor scale code {t.scale_code!r} outside 0..255")
    if bits == 32:
        if t.values.dtype != np.float32 or t.values.shape != (count,):
            raise PayloadError(f"{t.name}: expected {count} float32 values")
        if not np.all(np.isfinite(t.values)):
            raise PayloadError(f"{t.name}: values must be finite")
        return
    if t.values.dtype != np.uint8 or t.values.shape != (count,):
        raise PayloadError(f"{t.name}: expected {count} {bits}-bit codes, got {t.values.size}")
    if np.any(t.values > 2**bits - 2):
        raise PayloadError(f"{t.name}: code outside the symmetric {bits}-bit range")


def check_encoded(encoded: EncodedUpdate, expected: Schema, kind: str, bits: int | None) -> None:
    """Raise PayloadError unless `encoded` is a well-formed `kind` matching `expected`."""
    if not isinstance(encoded, EncodedUpdate) or encoded.kind != kind:
        raise PayloadError(f"expected an encoded {kind}, got {getattr(encoded, 'kind', encoded)!r}")
    if encoded.bits not in SUPPORTED_BITS:
        raise PayloadError(f"bit width {encoded.bits} not in {SUPPORTED_BITS}")
    if bits is not None and encoded.bits != bits:
        raise PayloadError(f"bit width {encoded.bits}, expected {bits}")
    if not math.isfinite(encoded.base_scale) or encoded.base_scale < 0:
        raise PayloadError("base scale must be finite and non-negative")
    names = [t.name for t in encoded.tensors]
    missing, extra = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
    if missing or extra or len(set(names)) != len(names):
        raise PayloadError(f"tensor names differ: missing {missing}, unexpected {extra}")
    sparse = bool(encoded.tensors) and encoded.tensors[0].indices is not None
    for t in encoded.tensors:
        if tuple(t.shape) != tuple(expected[t.name]):
            raise PayloadError(
                f"{t.name}: shape {tuple(t.shape)}, expected {tuple(expected[t.name])}"
            )
        _validate_tensor(t, encoded.bits, sparse)


def _decode(
    encoded: EncodedUpdate, expected: Schema, kind: str, bits: int | None
) -> dict[str, Tensor]:
    check_encoded(encoded, expected, kind, bits)
    with np.errstate(over="ignore"):
        out = {t.name: _decode_tensor(encoded, t) for t in encoded.tensors}
    bad = [name for name, x in out.items() if not np.all(np.isfinite(x))]
    if bad:
        raise PayloadError(f"decoded values of {bad} are non-finite: scales overflow float32")
    return {name: torch.from_numpy(x) for name, x in out.items()}


def decode_update(
    encoded: EncodedUpdate, expected: Schema, bits: int | None = None
) -> dict[str, Tensor]:
    """Dense float32 delta; PayloadError on any mismatch with `expected` names and shapes."""
    return _decode(encoded, expected, "update", bits)


def decode_state(
    encoded: EncodedUpdate, expected: Schema, bits: int | None = None
) -> dict[str, Tensor]:
    """Dense float32 state dict from `encode_state`; PayloadError on any mismatch."""
    return _decode(encoded, expected, "state", bits)
