"""Compressed model-update codec and its safe wire format.

Uplink: the client's delta (local - global) is quantized per output channel (symmetric scale
max|x_c| / (2^(b-1) - 1)) with unbiased stochastic rounding to 8, 4 or 2 bits and bit-packed, so
4-bit and 2-bit codes take 4 and 2 bits each; optional top-k sparsification and an error-feedback
residual kept by the client. 32 bits is a raw float32 passthrough. Downlink: `encode_state`
quantizes a state dict with deterministic rounding (MCU clients download int8 models).

Wire format (`to_bytes`): magic b"FHQC", uint16 version, uint32 metadata length (little endian),
UTF-8 JSON metadata, then per tensor its float32 scales, indices and values. No pickle; every
length is derived from the metadata and checked, so truncation or garbage raises PayloadError.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SUPPORTED_BITS = (2, 4, 8, 32)
KINDS = ("update", "state")
MAGIC, VERSION = b"FHQC", 1
_HEADER = struct.Struct("<4sHI")  # magic, version, metadata length


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

    bits: int = 8  # 4x fewer bytes than float32 at negligible error for FedAvg
    topk_fraction: float = 1.0
    error_feedback: bool = False

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction={self.topk_fraction} must be in (0, 1]")


@dataclass(frozen=True)
class EncodedTensor:
    """One compressed tensor: packed codes (or float32 values), scales, optional indices."""

    name: str
    shape: tuple[int, ...]
    bits: int
    scales: np.ndarray  # float32 (num_scales(shape),), empty for 32 bits
    values: np.ndarray  # uint8 packed codes, or float32 values for 32 bits
    indices: np.ndarray | None  # sorted flat positions (uint16/uint32); None means dense


@dataclass(frozen=True)
class EncodedUpdate:
    """A compressed update ("update") or downlink model ("state")."""

    kind: str
    tensors: tuple[EncodedTensor, ...]


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; use one of {SUPPORTED_BITS}")


def num_scales(shape: Sequence[int], bits: int) -> int:
    """One scale per output channel (dim 0) for matrices and kernels, one for vectors."""
    if bits == 32:
        return 0
    return shape[0] if len(shape) >= 2 else 1


def _index_dtype(numel: int) -> np.dtype:
    return np.dtype("<u2") if numel <= 2**16 else np.dtype("<u4")


def _channels(positions: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Output channel of each flat position."""
    if len(shape) < 2:
        return np.zeros(positions.shape, dtype=np.int64)
    return positions // max(1, math.prod(shape[1:]))


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes below 2^bits into bytes, first code in the low bits."""
    if bits == 8:
        return codes.astype(np.uint8)
    per = 8 // bits
    padded = np.zeros(-(-codes.size // per) * per, dtype=np.uint8)
    padded[: codes.size] = codes
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return packed[:count]
    shifts = (np.arange(8 // bits, dtype=np.uint8) * bits).astype(np.uint8)
    return ((packed[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:count]


def _encode_tensor(
    name: str, x: np.ndarray, bits: int, fraction: float, rng: np.random.Generator | None
) -> EncodedTensor:
    """Quantize one tensor (float64 array); rng=None rounds to nearest, else stochastically."""
    flat = x.reshape(-1)
    indices = None
    if fraction < 1.0 and flat.size > 0:
        k = max(1, math.ceil(fraction * flat.size))
        top = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
        indices = top.astype(_index_dtype(flat.size))
        flat = flat[top]
    positions = np.arange(flat.size) if indices is None else indices.astype(np.int64)
    if bits == 32:
        return EncodedTensor(
            name, x.shape, bits, np.zeros(0, np.float32), flat.astype("<f4"), indices
        )
    qmax = 2 ** (bits - 1) - 1
    channel = _channels(positions, x.shape)
    amax = np.zeros(num_scales(x.shape, bits))
    np.maximum.at(amax, channel, np.abs(flat))
    scales = (amax / qmax).astype(np.float32)
    s = scales[channel].astype(np.float64)
    v = np.divide(flat, s, out=np.zeros_like(flat), where=s > 0)
    if rng is None:
        q = np.rint(v)
    else:
        low = np.floor(v)
        q = low + (rng.random(v.shape) < v - low)  # E[q] = v: unbiased
    codes = (np.clip(q, -qmax, qmax) + qmax).astype(np.uint8)
    return EncodedTensor(name, x.shape, bits, scales, _pack(codes, bits), indices)


def _decode_tensor(t: EncodedTensor) -> np.ndarray:
    """Dense float32 array of a validated tensor."""
    numel = math.prod(t.shape)
    count = numel if t.indices is None else t.indices.size
    if t.bits == 32:
        kept = t.values.astype(np.float32)
    else:
        qmax = 2 ** (t.bits - 1) - 1
        positions = np.arange(count) if t.indices is None else t.indices.astype(np.int64)
        q = _unpack(t.values, t.bits, count).astype(np.float32) - qmax
        kept = q * t.scales[_channels(positions, t.shape)]
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
            arrays[name] = arrays[name] + r.detach().cpu().double().numpy()
    tensors = tuple(
        _encode_tensor(n, a, cfg.bits, cfg.topk_fraction, rng) for n, a in arrays.items()
    )
    encoded = EncodedUpdate("update", tensors)
    if not cfg.error_feedback:
        return encoded, None
    new_residual = {
        t.name: torch.from_numpy((arrays[t.name] - _decode_tensor(t)).astype(np.float32))
        for t in tensors
    }
    return encoded, new_residual


def encode_state(state: Mapping[str, Tensor], bits: int) -> EncodedUpdate:
    """Compress a full state dict for the downlink with deterministic round-to-nearest."""
    _check_bits(bits)
    arrays = _as_arrays(state, "state")
    return EncodedUpdate(
        "state", tuple(_encode_tensor(n, a, bits, 1.0, None) for n, a in arrays.items())
    )


def _validate(t: EncodedTensor) -> None:
    """Raise PayloadError unless the tensor's parts are mutually consistent and finite."""
    if not isinstance(t.name, str) or not t.name:
        raise PayloadError("tensor name must be a non-empty string")
    if not all(type(d) is int and d >= 0 for d in t.shape):
        raise PayloadError(f"{t.name}: shape {t.shape} must be non-negative integers")
    if t.bits not in SUPPORTED_BITS:
        raise PayloadError(f"{t.name}: bit width {t.bits} not in {SUPPORTED_BITS}")
    numel = math.prod(t.shape)
    count = numel
    if t.indices is not None:
        idx = t.indices
        if idx.dtype != _index_dtype(numel) or idx.ndim != 1:
            raise PayloadError(f"{t.name}: indices must be 1-D {_index_dtype(numel)}")
        if idx.size and (idx[-1] >= numel or np.any(np.diff(idx.astype(np.int64)) <= 0)):
            raise PayloadError(f"{t.name}: indices must be increasing and below {numel}")
        count = idx.size
    want_scales = num_scales(t.shape, t.bits)
    if t.scales.dtype != np.float32 or t.scales.shape != (want_scales,):
        raise PayloadError(
            f"{t.name}: expected {want_scales} float32 scales, got {t.scales.size} {t.scales.dtype}"
        )
    if not np.all(np.isfinite(t.scales)) or np.any(t.scales < 0):
        raise PayloadError(f"{t.name}: scales must be finite and non-negative")
    if t.bits == 32:
        if t.values.dtype != np.float32 or t.values.shape != (count,):
            raise PayloadError(f"{t.name}: expected {count} float32 values")
        if not np.all(np.isfinite(t.values)):
            raise PayloadError(f"{t.name}: values must be finite")
        return
    nbytes = -(-count * t.bits // 8)
    if t.values.dtype != np.uint8 or t.values.shape != (nbytes,):
        raise PayloadError(
            f"{t.name}: expected {nbytes} packed bytes for {count} "
            f"{t.bits}-bit codes, got {t.values.size}"
        )
    if np.any(_unpack(t.values, t.bits, count) > 2**t.bits - 2):
        raise PayloadError(f"{t.name}: code outside the symmetric {t.bits}-bit range")


def _decode(
    encoded: EncodedUpdate, expected: Mapping[str, Sequence[int]], kind: str, bits: int | None
) -> dict[str, Tensor]:
    if not isinstance(encoded, EncodedUpdate) or encoded.kind != kind:
        raise PayloadError(f"expected an encoded {kind}, got {getattr(encoded, 'kind', encoded)!r}")
    names = [t.name for t in encoded.tensors]
    if len(set(names)) != len(names):
        raise PayloadError("duplicate tensor names")
    missing, extra = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
    if missing or extra:
        raise PayloadError(f"tensor names differ: missing {missing}, unexpected {extra}")
    out = {}
    for t in encoded.tensors:
        _validate(t)
        if tuple(t.shape) != tuple(expected[t.name]):
            raise PayloadError(
                f"{t.name}: shape {tuple(t.shape)}, expected {tuple(expected[t.name])}"
            )
        if bits is not None and t.bits != bits:
            raise PayloadError(f"{t.name}: bit width {t.bits}, expected {bits}")
        out[t.name] = torch.from_numpy(_decode_tensor(t))
    return out


def decode_update(
    encoded: EncodedUpdate, expected: Mapping[str, Sequence[int]], bits: int | None = None
) -> dict[str, Tensor]:
    """Dense float32 delta; PayloadError on any mismatch with `expected` names and shapes."""
    return _decode(encoded, expected, "update", bits)


def decode_state(
    encoded: EncodedUpdate, expected: Mapping[str, Sequence[int]], bits: int | None = None
) -> dict[str, Tensor]:
    """Dense float32 state dict from `encode_state`; PayloadError on any mismatch."""
    return _decode(encoded, expected, "state", bits)


def _metadata(encoded: EncodedUpdate) -> bytes:
    tensors = [
        {
            "name": t.name,
            "shape": list(t.shape),
            "bits": t.bits,
            "count": None if t.indices is None else int(t.indices.size),
        }
        for t in encoded.tensors
    ]
    meta = {"kind": encoded.kind, "tensors": tensors}
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()


def to_bytes(encoded: EncodedUpdate) -> bytes:
    """Serialize: header, JSON metadata, then scales, indices and values of each tensor."""
    for t in encoded.tensors:
        _validate(t)
    meta = _metadata(encoded)
    parts = [_HEADER.pack(MAGIC, VERSION, len(meta)), meta]
    for t in encoded.tensors:
        parts += [
            t.scales.astype("<f4").tobytes(),
            b"" if t.indices is None else t.indices.tobytes(),
            t.values.tobytes(),
        ]
    return b"".join(parts)


def payload_bytes(encoded: EncodedUpdate) -> int:
    """Exact length of `to_bytes(encoded)` without building it."""
    body = sum(
        t.scales.nbytes + t.values.nbytes + (0 if t.indices is None else t.indices.nbytes)
        for t in encoded.tensors
    )
    return _HEADER.size + len(_metadata(encoded)) + body


def _take(data: bytes, offset: int, n: int, dtype: str, what: str) -> tuple[np.ndarray, int]:
    size = n * np.dtype(dtype).itemsize
    if offset + size > len(data):
        raise PayloadError(f"truncated payload while reading {what}")
    return np.frombuffer(data, dtype=dtype, count=n, offset=offset).copy(), offset + size


def _parse_entry(entry: object) -> tuple[str, tuple[int, ...], int, int | None]:
    if not isinstance(entry, dict) or set(entry) != {"name", "shape", "bits", "count"}:
        raise PayloadError("tensor metadata must have exactly name, shape, bits, count")
    name, shape, bits, count = entry["name"], entry["shape"], entry["bits"], entry["count"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise PayloadError(f"shape {shape!r} must be a list of non-negative integers")
    if bits not in SUPPORTED_BITS or type(bits) is not int:
        raise PayloadError(f"bit width {bits!r} not in {SUPPORTED_BITS}")
    if count is not None and (type(count) is not int or not 0 <= count <= math.prod(shape)):
        raise PayloadError(f"kept count {count!r} must be an integer within the tensor size")
    if not isinstance(name, str):
        raise PayloadError("tensor name must be a string")
    return name, tuple(shape), bits, count


def from_bytes(data: bytes) -> EncodedUpdate:
    """Parse and validate `to_bytes` output; PayloadError on truncation, garbage or bad fields."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise PayloadError("truncated payload: shorter than the header")
    magic, version, meta_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"bad magic {magic!r}; not a fedhar codec payload")
    if version != VERSION:
        raise PayloadError(f"unsupported payload version {version}; this reader knows {VERSION}")
    offset = _HEADER.size + meta_len
    if offset > len(data):
        raise PayloadError("truncated payload: metadata cut short")
    try:
        meta = json.loads(data[_HEADER.size : offset].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PayloadError(f"metadata is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or set(meta) != {"kind", "tensors"}:
        raise PayloadError("metadata must have exactly kind and tensors")
    if meta["kind"] not in KINDS or not isinstance(meta["tensors"], list):
        raise PayloadError(f"kind must be one of {KINDS} with a tensor list")
    tensors = []
    for entry in meta["tensors"]:
        name, shape, bits, count = _parse_entry(entry)
        numel = math.prod(shape)
        scales, offset = _take(data, offset, num_scales(shape, bits), "<f4", f"{name} scales")
        indices = None
        if count is not None:
            indices, offset = _take(data, offset, count, _index_dtype(numel).str, f"{name} indices")
        kept = numel if count is None else count
        if bits == 32:
            values, offset = _take(data, offset, kept, "<f4", f"{name} values")
        else:
            values, offset = _take(data, offset, -(-kept * bits // 8), "u1", f"{name} values")
        tensor = EncodedTensor(name, shape, bits, scales.astype(np.float32), values, indices)
        _validate(tensor)
        tensors.append(tensor)
    if offset != len(data):
        raise PayloadError(f"{len(data) - offset} trailing bytes after the last tensor")
    return EncodedUpdate(meta["kind"], tuple(tensors))
