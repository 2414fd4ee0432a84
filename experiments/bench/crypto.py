"""Envelope cost per model update: seal and open time, and bytes added on the wire.

Payload sizes follow the models' encoded updates (12 KB to 1.2 MB). Times are medians over
``--repeats`` runs with ``time.perf_counter``; overhead is envelope size minus payload size.

    python -m experiments.bench.crypto --repeats 30
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedhar.transport.envelope import (
    AEADS,
    EnvelopeContext,
    EnvelopePolicy,
    ReplayGuard,
    open_envelope,
    seal,
)
from fedhar.transport.keys import DeviceIdentity, ServerKeyPair

PAYLOAD_SIZES = {"12 KB": 12_000, "48 KB": 48_000, "200 KB": 200_000, "1.2 MB": 1_200_000}


@dataclass(frozen=True)
class BenchRow:
    """One payload size under one AEAD."""

    label: str
    aead: str
    payload_bytes: int
    seal_ms: float  # median
    open_ms: float  # median
    overhead_bytes: int  # envelope - payload


def median_ms(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``step`` in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_cell(
    label: str, payload: bytes, aead: str, repeats: int, server: ServerKeyPair,
    device: DeviceIdentity,
) -> BenchRow:  # fmt: skip
    """Seal and open ``payload`` under ``aead`` ``repeats`` times each."""
    context = EnvelopeContext("bench", round=1, node_id=0, message_type="train-reply",
                              format_version=1)  # fmt: skip
    policy = EnvelopePolicy(max_payload_bytes=len(payload))
    guard = ReplayGuard()
    blobs = [seal(payload, context, server.public_bytes(), device, aead) for _ in range(repeats)]
    pending = iter(blobs)  # each open takes a fresh envelope, as the replay guard demands
    device_key = device.signing_public_bytes()
    open_ms = median_ms(
        lambda: open_envelope(next(pending), context, server, device_key, policy, guard), repeats
    )
    seal_ms = median_ms(
        lambda: seal(payload, context, server.public_bytes(), device, aead), repeats
    )
    return BenchRow(label, aead, len(payload), seal_ms, open_ms, len(blobs[0]) - len(payload))


def bench_envelopes(repeats: int, seed: int = 0) -> list[BenchRow]:
    """Every payload size under every AEAD."""
    server = ServerKeyPair.from_seed(seed)
    device = DeviceIdentity.from_seed(seed, device_id=0)
    rng = random.Random(seed)
    return [
        bench_cell(label, payload, aead, repeats, server, device)
        for label, payload in ((k, rng.randbytes(n)) for k, n in PAYLOAD_SIZES.items())
        for aead in AEADS
    ]


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table of ``rows``."""
    lines = [
        "| payload | aead | seal ms | open ms | overhead bytes | overhead % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = 100 * r.overhead_bytes / r.payload_bytes
        lines.append(f"| {r.label} | {r.aead} | {r.seal_ms:.3f} | {r.open_ms:.3f} | "
                     f"{r.overhead_bytes} | {share:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="runs per cell (median taken)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(format_table(bench_envelopes(args.repeats, args.seed)))


if __name__ == "__main__":
    main()
