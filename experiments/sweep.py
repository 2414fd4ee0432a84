"""Collects a Hydra multirun's ``summary.json`` files into one table, and one over seeds.

``sweep_summary.csv`` has one row per finished job; ``sweep_over_seeds.csv`` one row per
setting (a job's overrides without ``seed=``) with the number of seeds and the mean and
sample standard deviation of every score over them.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from experiments.compare import write_report

SUMMARY_FILE = "sweep_summary.csv"
OVER_SEEDS_FILE = "sweep_over_seeds.csv"
SCORES = ("heldout_macro_f1", "user_mean_f1", "user_worst10_f1")


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
    return _write_csv(Path(sweep_dir) / SUMMARY_FILE, rows)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def setting_of(overrides: str) -> str:
    """A job's overrides without its seed: what the seeds of one setting share."""
    return " ".join(t for t in overrides.split() if not t.startswith(("seed=", "+seed=")))


def over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: how many seeds finished, and each score's mean and std over them."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(setting_of(str(row.get("overrides", ""))), []).append(row)
    out = []
    for setting, jobs in groups.items():
        summary: dict[str, Any] = {"setting": setting, "seeds": len(jobs)}
        for score in SCORES:
            values = [float(j[score]) for j in jobs if isinstance(j.get(score), int | float)]
            summary[f"{score}_mean"] = statistics.fmean(values) if values else None
            summary[f"{score}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(summary)
    return out


def write_over_seeds(sweep_dir: Path) -> Path:
    """``sweep_over_seeds.csv`` of the finished jobs under ``sweep_dir``."""
    return _write_csv(Path(sweep_dir) / OVER_SEEDS_FILE, over_seeds(collect_summaries(sweep_dir)))


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
    console = console or Console()
    console.print(table)
    seeds = Table(title="mean ± std over seeds")
    for column in ("setting", "seeds", *SCORES):
        seeds.add_column(column)
    for summary in over_seeds(rows):
        cells = [_mean_std(summary[f"{s}_mean"], summary[f"{s}_std"]) for s in SCORES]
        seeds.add_row(summary["setting"] or "(defaults)", str(summary["seeds"]), *cells)
    console.print(seeds)


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write and print ``sweep_summary.csv`` and the
    summary over seeds, and write ``report.md`` comparing the jobs (`experiments.compare`)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if collect_summaries(sweep_dir):
            write_sweep_summary(sweep_dir)
            write_over_seeds(sweep_dir)
            print_sweep_summary(sweep_dir)
            jobs = sorted(p.parent for p in sweep_dir.glob("*/config.yaml"))
            print(f"side by side: {write_report(jobs, sweep_dir)}")
