"""End-of-run summary: the table the main job prints and ``summary.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from experiments.sinks import read_metrics
from fedhar.checkpoint import load_checkpoint
from fedhar.models import ModelShape


def _f1(row: dict[str, Any], group: str, key: str) -> float | None:
    value = (row.get(group) or {}).get(key)
    return None if value is None else float(value)


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """Final scores and cost figures of a run, read back from its ``metrics.jsonl``."""
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir} has no completed rounds in metrics.jsonl")
    last = rows[-1]
    return {
        "rounds": last["server_round"],
        "heldout_macro_f1": _f1(last, "server", "macro_f1"),
        "heldout_accuracy": _f1(last, "server", "accuracy"),
        "user_mean_f1": _f1(last, "per_user_summary", "mean_f1"),
        "user_median_f1": _f1(last, "per_user_summary", "median_f1"),
        "user_worst10_f1": _f1(last, "per_user_summary", "worst10_f1"),
        "mean_round_wall_s": sum(r["wall_time_s"] for r in rows) / len(rows),
        "total_failures": sum(r["num_failures"] for r in rows),
        "total_declines": sum(r["num_declines"] for r in rows),
        "bytes_up": sum(r["bytes_up"] for r in rows),
        "bytes_down": sum(r["bytes_down"] for r in rows),
    }


def run_config(run_dir: Path) -> DictConfig:
    """The resolved config a run directory was started with."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{run_dir}/config.yaml is not a run config (a mapping)")
    return cfg


def global_model(run_dir: Path, shape: ModelShape) -> torch.nn.Module:
    """The run's latest global model, at full width."""
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is None:
        raise SystemExit(f"{run_dir} has no checkpoint; run the federation first")
    model = shape.build(1.0)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.arrays.items()})
    return model


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


SUMMARY_COLUMNS = (
    "round", "loss", "heldout F1", "user F1", "worst10 F1", "fail", "decl", "MB up", "wall s",
)  # fmt: skip


def summary_table(run_dir: Path, title_dir: Path | str | None = None) -> Table:
    """The per-round table of a run; its title names ``title_dir`` (default ``run_dir``)."""
    table = Table(title=f"fedhar run: {title_dir or run_dir}")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="right")
    for row in read_metrics(run_dir):
        table.add_row(
            str(row["server_round"]),
            _fmt((row.get("train") or {}).get("train-loss")),
            _fmt(_f1(row, "server", "macro_f1")),
            _fmt(_f1(row, "per_user_summary", "mean_f1")),
            _fmt(_f1(row, "per_user_summary", "worst10_f1")),
            str(row["num_failures"]),
            str(row["num_declines"]),
            f"{row['bytes_up'] / 1e6:.2f}",
            f"{row['wall_time_s']:.1f}",
        )
    return table


def print_summary(summary: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    """Per-round table, then where the outputs are."""
    console = console or Console()
    console.print(summary_table(run_dir))
    console.print(
        f"outputs: {run_dir}/metrics.jsonl, per_user.csv, metrics.png, per_user_f1.png, "
        "checkpoint.pt, summary.json"
    )
