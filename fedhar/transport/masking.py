"""The arithmetic of secure aggregation: fixed-point updates in an integer ring, masks, layouts.

- **Ring.** Clients send integers mod 2^r. `RingSpec.for_cohort` sizes r so that the sum of a
  whole cohort's weighted, quantized updates can never wrap: ``bits`` per coordinate, weights
  up to ``max_weight``, ``cohort`` clients.
- **Quantization.** Every client quantizes its update on one fixed grid (``clip / levels``)
  with unbiased stochastic rounding, after clipping to [-clip, clip], so that integer sums
  are sums of updates. (The codec's per-channel scales differ between clients and do not add.)
- **Masks.** A mask is the AES-256-CTR keystream of a 256-bit seed, read as little-endian
  uint64 words; all arithmetic is mod 2^64, which reduces exactly to mod 2^r.
- **Layouts.** The coordinates are the float entries of the global model, in order
  (`CoordinateSpace`). A client's vector covers the coordinates it trained: per entry, a
  product of index lists (`fedhar.partial.spec.ParamSlice`) or the whole tensor. Two clients'
  pairwise mask covers exactly the coordinates both hold, so it cancels in every sum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
CLIP_COUNTER = "secagg.clipped"  # one extra coordinate: how many values each client clipped
MAX_RING_BITS = 64
Indices = tuple[tuple[int, ...] | None, ...]  # per tensor dimension: kept indices, None: all


class LayoutError(ValueError):
    """A layout or vector that does not fit the coordinate space it claims."""


@dataclass(frozen=True)
class RingSpec:
    """How updates become ring elements: ``bits``-bit fixed point in [-clip, clip], weights up
    to ``max_weight``, summed mod 2^``ring_bits``."""

    bits: int
    clip: float
    max_weight: int
    ring_bits: int

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 32:
            raise ValueError(f"secagg bits={self.bits} must lie in [2, 32]")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"secagg clip={self.clip} must be a positive number")
        if self.max_weight < 1:
            raise ValueError(f"secagg max_weight={self.max_weight} must be at least 1")
        if not self.bits < self.ring_bits <= MAX_RING_BITS:
            raise ValueError(f"ring_bits={self.ring_bits} must lie in ({self.bits}, 64]")

    @classmethod
    def for_cohort(
        cls, cohort: int, bits: int, clip: float, max_weight: int, max_count: int = 0
    ) -> RingSpec:
        """The smallest ring that holds ``cohort`` clients' sums, and counts up to
        ``max_count`` per client; refused if over 64 bits."""
        if cohort < 1:
            raise ValueError(f"cohort must be at least 1, got {cohort}")
        need = bits + math.ceil(math.log2(max_weight + 1)) + math.ceil(math.log2(cohort)) + 1
        need = max(need, math.ceil(math.log2(max_count * cohort + 1)) + 1)
        if need > MAX_RING_BITS:
            raise ValueError(
                f"a cohort of {cohort} with bits={bits} and max_weight={max_weight} needs a "
                f"{need}-bit ring, over {MAX_RING_BITS}: lower secagg bits or max_weight, or "
                "sample fewer clients per round"
            )
        return cls(bits, float(clip), int(max_weight), need)

    @property
    def levels(self) -> int:
        """Largest quantized magnitude: values map to integers in [-levels, levels]."""
        return 2 ** (self.bits - 1) - 1

    @property
    def step(self) -> float:
        """The value of one quantization level."""
        return self.clip / self.levels

    def weight(self, num_examples: int) -> int:
        """A client's integer weight: its example count, capped at ``max_weight``."""
        return max(0, min(int(num_examples), self.max_weight))

    def quantize(self, values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """(int64 levels, how many values were clipped): unbiased stochastic rounding."""
        flat = np.asarray(values, dtype=np.float64).ravel()
        if not np.all(np.isfinite(flat)):
            raise ValueError("the update has non-finite values; it cannot be quantized")
        clipped = int(np.count_nonzero(np.abs(flat) > self.clip))
        scaled = np.clip(flat, -self.clip, self.clip) / self.step
        low = np.floor(scaled)
        levels = low + (rng.random(scaled.shape) < scaled - low)
        return levels.astype(np.int64), clipped

    def to_signed(self, ring: np.ndarray) -> np.ndarray:
        """Ring elements (uint64) as the signed integers they encode."""
        reduced = np.asarray(ring, dtype=np.uint64) & np.uint64(2**self.ring_bits - 1)
        signed = reduced.astype(np.int64) if self.ring_bits < 64 else reduced.view(np.int64)
        if self.ring_bits < 64:
            signed = np.where(
                signed >= 2 ** (self.ring_bits - 1), signed - 2**self.ring_bits, signed
            )
        return signed

    def reduce(self, ring: np.ndarray) -> np.ndarray:
        """uint64 words reduced mod 2^ring_bits: what a client sends."""
        return np.asarray(ring, dtype=np.uint64) & np.uint64(2**self.ring_bits - 1)


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint64 words of the AES-256-CTR keystream of ``seed`` (a fresh key per use)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


@dataclass(frozen=True)
class CoordinateSpace:
    """The float entries of the global model, in order: the coordinates that are summed."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, shapes: Mapping[str, Sequence[int]]) -> CoordinateSpace:
        return cls(tuple(shapes), tuple(tuple(int(d) for d in s) for s in shapes.values()))

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    def offsets(self) -> dict[str, int]:
        sizes = [math.prod(shape) for shape in self.shapes]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
        return dict(zip(self.names, (int(s) for s in starts), strict=True))

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.names.index(name)]

    def to_bytes(self) -> bytes:
        return json.dumps({"names": self.names, "shapes": self.shapes}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CoordinateSpace:
        try:
            parsed = json.loads(data)
            return cls.of(dict(zip(parsed["names"], parsed["shapes"], strict=True)))
        except (ValueError, KeyError, TypeError) as error:
            raise LayoutError(f"malformed coordinate space: {error}") from None


@dataclass(frozen=True)
class Layout:
    """The coordinates one client's vector covers: per entry, index lists or None (whole)."""

    entries: tuple[tuple[str, Indices | None], ...]

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    def shape_of(self, name: str, space: CoordinateSpace) -> tuple[int, ...]:
        """Shape of this client's part of entry ``name``."""
        indices, shape = dict(self.entries)[name], space.shape_of(name)
        if indices is None:
            return shape
        return tuple(s if i is None else len(i) for s, i in zip(shape, indices, strict=True))

    def flat(self, space: CoordinateSpace) -> np.ndarray:
        """Global positions of the vector's elements, in vector order (entries in space order)."""
        offsets = space.offsets()
        parts = []
        for name, indices in self.entries:
            shape = space.shape_of(name)
            if indices is None:
                positions = np.arange(math.prod(shape), dtype=np.int64)
            else:
                axes = [
                    np.arange(s) if i is None else np.asarray(i, dtype=np.int64)
                    for s, i in zip(shape, indices, strict=True)
                ]
                positions = np.ravel_multi_index(np.ix_(*axes), shape).ravel()
            parts.append(offsets[name] + positions.astype(np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def check(self, space: CoordinateSpace) -> None:
        """Refuse entries outside the space, out-of-range or repeated indices, wrong order."""
        order = [space.names.index(n) if n in space.names else -1 for n in self.names()]
        if -1 in order:
            raise LayoutError(
                f"layout entry {self.names()[order.index(-1)]!r} is not a float "
                "entry of the global model"
            )
        if order != sorted(set(order)):
            raise LayoutError("layout entries must be distinct and in the global model's order")
        for name, indices in self.entries:
            shape = space.shape_of(name)
            if indices is None:
                continue
            if len(indices) != len(shape):
                raise LayoutError(f"{name}: {len(indices)} index lists for a {len(shape)}-d entry")
            for dim, (index, size) in enumerate(zip(indices, shape, strict=True)):
                if index is None:
                    continue
                if len(set(index)) != len(index) or any(not 0 <= i < size for i in index):
                    raise LayoutError(f"{name}: dim {dim} indices repeat or leave [0, {size})")

    def to_bytes(self) -> bytes:
        return json.dumps([[name, indices] for name, indices in self.entries]).encode()

    @classmethod
    def from_bytes(cls, data: bytes, space: CoordinateSpace) -> Layout:
        try:
            entries = tuple(
                (
                    str(name),
                    None
                    if idx is None
                    else tuple(None if d is None else tuple(int(i) for i in d) for d in idx),
                )
                for name, idx in json.loads(data)
            )
        except (ValueError, TypeError) as error:
            raise LayoutError(f"malformed layout: {error}") from None
        layout = cls(entries)
        layout.check(space)
        return layout


def shared_positions(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Boolean mask over ``own``: the positions ``other`` covers too."""
    return np.isin(own, other, assume_unique=True)


def pair_mask(seed: bytes, own: np.ndarray, other: np.ndarray, space_size: int) -> np.ndarray:
    """The pairwise mask on ``own``'s vector: the keystream on shared coordinates, 0 elsewhere.

    The keystream is indexed by global coordinate, so both clients of a pair read the same word
    for every coordinate they share, wherever it sits in their vectors.
    """
    words = prg(seed, space_size)[own]
    if other is not own:  # clients holding the same layout share every coordinate
        words[~shared_positions(own, other)] = 0
    return words


def packed_size(length: int, ring_bits: int) -> int:
    """Bytes of ``length`` ring elements packed at ``ceil(ring_bits / 8)`` bytes each."""
    return length * math.ceil(ring_bits / 8)


def pack(ring: np.ndarray, ring_bits: int) -> bytes:
    """Ring elements as little-endian words of ``ceil(ring_bits / 8)`` bytes."""
    width = math.ceil(ring_bits / 8)
    words = np.ascontiguousarray(ring, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return words[:, :width].tobytes()


def unpack(data: bytes, length: int, ring_bits: int) -> np.ndarray:
    """The inverse of `pack`; a wrong byte count -> LayoutError."""
    width = math.ceil(ring_bits / 8)
    if len(data) != length * width:
        raise LayoutError(
            f"masked vector of {len(data)} bytes; {length} coordinates at "
            f"{width} bytes each need {length * width}"
        )
    words = np.zeros((length, 8), dtype=np.uint8)
    words[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(length, width)
    return words.view("<u8").ravel().astype(np.uint64)


def weight_sums(
    space: CoordinateSpace,
    layouts: Mapping[int, Layout],
    positions: Mapping[int, np.ndarray],
    weights: Mapping[int, int],
    trained: Mapping[int, Sequence[str] | None],
) -> np.ndarray:
    """Per coordinate, the summed weight of the senders whose update covers it.

    A sender covers the entries of its layout, or only those of them it trained when
    ``trained[node]`` lists names (partial models average over the clients that trained).
    """
    total = np.zeros(space.size)
    for node, weight in weights.items():
        layout, position, start = layouts[node], positions[node], 0
        names = trained.get(node)
        for name in layout.names():
            size = math.prod(layout.shape_of(name, space))
            if names is None or name in names:
                total[position[start : start + size]] += weight
            start += size
    return total
