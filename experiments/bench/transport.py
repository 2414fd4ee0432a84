"""Cost of the encrypted update transport inside a federated run.

Runs a short simulation with ``wrappers=[encryption]`` and reads ``metrics.jsonl``: the
wrapper records, per round, the clients' summed seal time, the server's open time (verify,
decrypt, parse), the downlink seal time, envelope bytes and the bytes the envelopes add over
the clear update. The share of the round is the summed transport time over the round's wall
time; client seals run in parallel on the workers, so summing them overstates their effect on
the wall clock. Round 1 carries the runtime's start-up and is left out of the means.

    python -m experiments.bench.transport --rounds 4 [hydra overrides, e.g. model=dscnn]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.compose import load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics

TRANSPORT_SECONDS = (
    "encryption/client-seal-seconds",
    "encryption/server-open-seconds",
    "encryption/downlink-seal-seconds",
    "encryption/client-open-seconds",
)


@dataclass(frozen=True)
class TransportRow:
    """One round's transport cost, per accepted update where it says so."""

    server_round: int
    updates: int
    seal_ms: float  # client, per update
    open_ms: float  # server, per update
    envelope_bytes: float  # per update
    overhead_bytes: float  # per update: envelope - clear payload
    wall_time_s: float
    share: float  # all transport seconds / round wall time


def transport_row(record: dict[str, Any]) -> TransportRow:
    """Per-update figures of one ``metrics.jsonl`` row of an encrypted run."""
    extra = record["extra"]
    updates = int(extra.get("encryption/accepted", 0))
    if updates == 0:
        raise ValueError(
            f"round {record['server_round']} accepted no sealed update (stats: {extra}); "
            "check that the run used wrappers=[encryption] and that enrollment reached it"
        )
    seconds = sum(extra.get(k, 0.0) for k in TRANSPORT_SECONDS)
    return TransportRow(
        server_round=record["server_round"],
        updates=updates,
        seal_ms=1e3 * extra["encryption/client-seal-seconds"] / updates,
        open_ms=1e3 * extra["encryption/server-open-seconds"] / updates,
        envelope_bytes=extra["encryption/envelope-bytes"] / updates,
        overhead_bytes=extra["encryption/overhead-bytes"] / updates,
        wall_time_s=record["wall_time_s"],
        share=seconds / record["wall_time_s"],
    )


def format_table(rows: list[TransportRow]) -> str:
    """Markdown table of ``rows`` and the mean over rounds after the first."""
    lines = [
        "| round | updates | seal ms/update | open ms/update | envelope B/update "
        "| overhead B/update | round wall s | transport share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.server_round} | {r.updates} | {r.seal_ms:.2f} | {r.open_ms:.2f} "
            f"| {r.envelope_bytes:,.0f} | {r.overhead_bytes:,.0f} "
            f"({r.overhead_bytes / (r.envelope_bytes - r.overhead_bytes):.2%}) "
            f"| {r.wall_time_s:.2f} | {r.share:.2%} |"
        )
    steady = rows[1:] or rows
    lines.append(
        f"| mean r>=2 | | {statistics.mean(r.seal_ms for r in steady):.2f} "
        f"| {statistics.mean(r.open_ms for r in steady):.2f} | | "
        f"| | {statistics.mean(r.share for r in steady):.2%} |"
    )
    return "\n".join(lines)


def bench_transport(rounds: int, run_dir: Path, overrides: list[str]) -> list[TransportRow]:
    """Run ``rounds`` encrypted rounds in ``run_dir`` and return each round's figures."""
    cfg = load_config(
        [
            "wrappers=[encryption]",
            f"num_rounds={rounds}",
            "resume=false",
            "tracking.progress=false",
            "tracking.plots=false",
            *overrides,
        ]
    )
    run_experiment(cfg, run_dir)
    return [transport_row(record) for record in read_metrics(run_dir)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--run-dir", type=Path, default=Path("outputs/bench_transport"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=dscnn")
    args = parser.parse_args()
    print(format_table(bench_transport(args.rounds, args.run_dir, args.overrides)))


if __name__ == "__main__":
    main()
