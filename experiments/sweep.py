"""Collects a Hydra multirun's ``summary.json`` files into one table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

SUMMARY_FILE = "sweep_summary.csv"


def collect_summaries(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job: its override string and its summary."""
    rows = []
    for path in sorted(Path(sweep_dir).glob("*/summary.json")):
        rows.append({"job": path.parent.name, **json.loads(path.read_text())})
    return rows


def write_sweep_summary(sweep_dir: Path) -> Path:
    rows = collect_summaries(sweep_dir)
    if not rows:
        raise ValueError(f"no finished jobs (*/summary.json) under {sweep_dir}")
    path = Path(sweep_dir) / SUMMARY_FILE
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def print_sweep_summary(sweep_dir: Path, console: Console | None = None) -> None:
    rows = collect_summaries(sweep_dir)
    table = Table(title=f"sweep {sweep_dir}")
    columns = (
        "job", "overrides", "heldout_macro_f1", "user_mean_f1", "user_worst10_f1",
        "mean_round_wall_s",
    )  # fmt: skip
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in map(row.get, columns))
        )
    (console or Console()).print(table)


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write ``sweep_summary.csv`` and print it."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if collect_summaries(sweep_dir):
            write_sweep_summary(sweep_dir)
            print_sweep_summary(sweep_dir)
