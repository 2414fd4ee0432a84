"""The compact, strict wire format of `fedhar.transport.codec` payloads.

Layout (little endian): magic b"FHQC", uint16 version, uint8 kind, uint8 bits, uint8 flags,
8-byte schema hash; below 32 bits the float32 base scale, one tensor scale code per tensor and
the 4-bit channel scale codes, packed; when sparse, uint32 kept counts then each tensor's
indices; then all values (codes packed to `bits` bits, or float32). Names and shapes are not
sent: both sides know them from the global model, and the schema hash proves they agree.
Tensors travel in sorted-name order. No pickle; every length follows from the receiver's
schema and is checked, so truncation, garbage or a different model raise PayloadError.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
from collections.abc import Sequence

import numpy as np

from fedhar.transport.codec import (
    KINDS,
    SUPPORTED_BITS,
    EncodedTensor,
    EncodedUpdate,
    PayloadError,
    Schema,
    check_encoded,
    index_dtype,
    num_channels,
)

MAGIC, VERSION = b"FHQC", 2
_HEADER = struct.Struct("<4sHBBB8s")  # magic, version, kind, bits, flags, schema hash
SPARSE = 1  # flags bit: kept counts and indices follow the scales
HEADER_BYTES = _HEADER.size
CHANNEL_CODE_BITS = 4  # 16 channel scale levels fit in a nibble


def schema_hash(expected: Schema) -> bytes:
    """8-byte fingerprint of the sorted (name, shape) list."""
    return hashlib.sha256(schema_to_bytes(expected)).digest()[:8]


def schema_to_bytes(expected: Schema) -> bytes:
    """Compact JSON of the sorted (name, shape) list, for a receiver that has no model."""
    items = [[name, [int(d) for d in expected[name]]] for name in sorted(expected)]
    return json.dumps(items, separators=(",", ":")).encode()


def schema_from_bytes(data: bytes) -> dict[str, tuple[int, ...]]:
    """Parse `schema_to_bytes` output; PayloadError unless it is a sorted, unique list."""
    try:
        items = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
        raise PayloadError(f"schema is not valid JSON: {err}") from None
    ok = isinstance(items, list) and all(
        isinstance(it, list)
        and len(it) == 2
        and isinstance(it[0], str)
        and isinstance(it[1], list)
        and all(type(d) is int and d >= 0 for d in it[1])
        for it in items
    )
    names = [it[0] for it in items] if ok else []
    if not ok or names != sorted(set(names)):
        raise PayloadError("schema must be a sorted list of unique [name, [dims]] pairs")
    return {name: tuple(shape) for name, shape in items}


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


def to_bytes(encoded: EncodedUpdate) -> bytes:
    """Serialize (validating first): header, scales, counts and indices, values."""
    tensors, bits = encoded.tensors, encoded.bits
    check_encoded(encoded, {t.name: t.shape for t in tensors}, encoded.kind, None)
    if [t.name for t in tensors] != sorted(t.name for t in tensors):
        raise ValueError("tensors must be sorted by name, as encode_update leaves them")
    sparse = bool(tensors) and tensors[0].indices is not None
    kind = KINDS.index(encoded.kind)
    schema = schema_hash({t.name: t.shape for t in tensors})
    parts = [_HEADER.pack(MAGIC, VERSION, kind, bits, SPARSE if sparse else 0, schema)]
    if bits < 32:
        channel = np.concatenate([np.zeros(0, np.uint8), *(t.channel_codes for t in tensors)])
        parts += [
            np.float32(encoded.base_scale).astype("<f4").tobytes(),
            bytes(t.scale_code for t in tensors),
            _pack(channel, CHANNEL_CODE_BITS).tobytes(),
        ]
    if sparse:
        counts = np.array([t.values.size for t in tensors], dtype="<u4")
        parts += [
            counts.tobytes(),
            *(t.indices.tobytes() for t in tensors if t.indices is not None),
        ]
    values = [np.zeros(0, np.float32 if bits == 32 else np.uint8), *(t.values for t in tensors)]
    flat = np.concatenate(values)
    parts.append(flat.astype("<f4").tobytes() if bits == 32 else _pack(flat, bits).tobytes())
    return b"".join(parts)


def payload_bytes(encoded: EncodedUpdate) -> int:
    """Exact length of `to_bytes(encoded)` without building it."""
    tensors, bits = encoded.tensors, encoded.bits
    size = _HEADER.size
    if bits < 32:
        channels = sum(t.channel_codes.size for t in tensors)
        size += 4 + len(tensors) + -(-channels // 2)
    if tensors and tensors[0].indices is not None:
        size += 4 * len(tensors) + sum(t.indices.nbytes for t in tensors if t.indices is not None)
    kept = sum(t.values.size for t in tensors)
    return size + (4 * kept if bits == 32 else -(-kept * bits // 8))


class _Reader:
    """Sequential reads from a payload that raise PayloadError when it runs short."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.offset = data, offset

    def take(self, n: int, dtype: str, what: str) -> np.ndarray:
        size = n * np.dtype(dtype).itemsize
        if self.offset + size > len(self.data):
            raise PayloadError(f"truncated payload while reading {what}")
        out = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.offset).copy()
        self.offset += size
        return out


def _split(flat: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    ends = np.cumsum([0, *sizes])
    return [flat[a:b] for a, b in itertools.pairwise(ends)]


def from_bytes(data: bytes, expected: Schema) -> EncodedUpdate:
    """Parse `to_bytes` output against the receiver's schema; PayloadError on any mismatch."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise PayloadError("truncated payload: shorter than the header")
    magic, version, kind, bits, flags, schema = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"bad magic {magic!r}; not a fedhar codec payload")
    if version != VERSION:
        raise PayloadError(f"unsupported payload version {version}; this reader knows {VERSION}")
    if kind >= len(KINDS) or bits not in SUPPORTED_BITS or flags not in (0, SPARSE):
        raise PayloadError(f"bad header: kind {kind}, bits {bits}, flags {flags}")
    if schema != schema_hash(expected):
        raise PayloadError(
            f"schema differs: payload was encoded for model {schema.hex()}, expected "
            f"{schema_hash(expected).hex()} ({len(expected)} tensors); sender and receiver "
            "disagree on tensor names or shapes"
        )
    names = sorted(expected)
    shapes = {n: tuple(int(d) for d in expected[n]) for n in names}
    read = _Reader(data, _HEADER.size)
    base, scale_codes, channel_codes = (
        0.0,
        [0] * len(names),
        {n: np.zeros(0, np.uint8) for n in names},
    )
    if bits < 32:
        base = float(read.take(1, "<f4", "base scale")[0])
        scale_codes = [int(c) for c in read.take(len(names), "u1", "tensor scale codes")]
        sizes = [num_channels(shapes[n], bits) for n in names]
        packed = read.take(-(-sum(sizes) // 2), "u1", "channel scale codes")
        codes = _split(_unpack(packed, CHANNEL_CODE_BITS, sum(sizes)), sizes)
        channel_codes = dict(zip(names, codes, strict=True))
    indices: dict[str, np.ndarray | None] = dict.fromkeys(names)
    counts = [math.prod(shapes[n]) for n in names]
    if flags & SPARSE:
        counts = [int(c) for c in read.take(len(names), "<u4", "kept counts")]
        for n, c in zip(names, counts, strict=True):
            if c > math.prod(shapes[n]):
                raise PayloadError(
                    f"{n}: kept count {c} exceeds its {math.prod(shapes[n])} entries"
                )
            indices[n] = read.take(c, index_dtype(math.prod(shapes[n])).str, f"{n} indices")
    total = sum(counts)
    if bits == 32:
        flat = read.take(total, "<f4", "values").astype(np.float32)
    else:
        flat = _unpack(read.take(-(-total * bits // 8), "u1", "values"), bits, total)
    if read.offset != len(data):
        raise PayloadError(f"{len(data) - read.offset} trailing bytes after the last tensor")
    values = _split(flat, counts)
    tensors = tuple(
        EncodedTensor(n, shapes[n], scale_codes[i], channel_codes[n], values[i], indices[n])
        for i, n in enumerate(names)
    )
    encoded = EncodedUpdate(KINDS[kind], bits, base, tensors)
    check_encoded(encoded, shapes, encoded.kind, None)
    return encoded


def fp32_payload_bytes(expected: Schema) -> int:
    """Length of the dense float32 payload of `expected`: the fp32 baseline, same framing."""
    return _HEADER.size + 4 * sum(math.prod(shape) for shape in expected.values())
