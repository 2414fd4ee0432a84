"""Round sinks: the files, plots, tracking and progress a run produces."""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, cast, get_args

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from experiments.plots import plot_metrics, plot_per_user
from fedhar.records import RoundRecord

METRICS_FILE = "metrics.jsonl"
PER_USER_FILE = "per_user.csv"
WandbMode = Literal["online", "offline", "disabled", "shared"]
log = logging.getLogger("fedhar")
PER_USER_FIELDS = ("server_round", "user", "device", "num_windows", "accuracy", "macro_f1")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's round records; a torn last line (a run killed mid-write) is dropped with a
    warning, any other line that is not JSON is a ValueError naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for position, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if position == len(lines) - 1:
                log.warning("%s, line %d is torn (%s); dropping it", path, number, error.msg)
                break
            raise ValueError(
                f"{path}, line {number} is not JSON ({error.msg}); repair or delete the line, "
                "or pass resume=false to start over"
            ) from None
    return rows


def truncate_outputs(run_dir: Path, last_round: int) -> None:
    """Drop rounds after ``last_round`` from the run's files (a resumed run redoes them)."""
    rows = [r for r in read_metrics(run_dir) if r["server_round"] <= last_round]
    (Path(run_dir) / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_user = Path(run_dir) / PER_USER_FILE
    if per_user.exists():
        with per_user.open() as handle:
            kept = [r for r in csv.DictReader(handle) if int(r["server_round"]) <= last_round]
        _write_per_user(per_user, kept, mode="w")


def _write_per_user(path: Path, rows: list[dict[str, Any]], mode: str) -> None:
    new_file = mode == "w" or not path.exists()
    with path.open(mode, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_USER_FIELDS)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)


class RunFiles:
    """Appends ``metrics.jsonl`` and ``per_user.csv`` and redraws the plots each round."""

    def __init__(self, run_dir: Path, plots: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plots = plots

    def on_round(self, record: RoundRecord) -> None:
        with (self.run_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(record.to_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        rows = [{"server_round": record.server_round, **asdict(s)} for s in record.per_user]
        _write_per_user(self.run_dir / PER_USER_FILE, rows, mode="a")
        if self.plots:
            plot_metrics(read_metrics(self.run_dir), self.run_dir / "metrics.png")
            if record.per_user:
                plot_per_user(record.per_user, self.run_dir / "per_user_f1.png")

    def close(self) -> None:
        """Files are flushed every round; nothing is buffered."""


class WandbTracking:
    """Logs each round's scalars and plots to Weights & Biases (offline unless told)."""

    def __init__(self, run_dir: Path, project: str, config: dict[str, Any], mode: str) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run_dir = Path(run_dir)
        wandb_mode = os.environ["WANDB_MODE"]
        if wandb_mode not in get_args(WandbMode):
            raise ValueError(f"WANDB_MODE={wandb_mode!r}; valid: {list(get_args(WandbMode))}")
        self.run = wandb.init(
            project=project, dir=str(run_dir), config=config, mode=cast(WandbMode, wandb_mode)
        )

    def on_round(self, record: RoundRecord) -> None:
        scalars = _flatten(record.to_json())
        for name in ("metrics.png", "per_user_f1.png"):
            if (self.run_dir / name).exists():
                scalars[name.removesuffix(".png")] = self._wandb.Image(str(self.run_dir / name))
        self.run.log(scalars, step=record.server_round)

    def close(self) -> None:
        self.run.finish()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, int | float):
            flat[name] = value
    return flat


class RoundProgress:
    """A rich progress bar over rounds, with an ETA and the latest scores."""

    def __init__(self, total_rounds: int, rounds_done: int, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]round {task.completed}/{task.total}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("", total=total_rounds, completed=rounds_done)
        self.progress.start()

    def on_round(self, record: RoundRecord) -> None:
        summary = record.per_user_summary
        f1 = f"user F1 {summary.mean_f1:.3f}" if summary else ""
        server = record.server.get("macro_f1")
        held_out = f" held-out F1 {server:.3f}" if server is not None else ""
        self.progress.update(self.task, advance=1, description=f"{f1}{held_out}")

    def close(self) -> None:
        self.progress.stop()
