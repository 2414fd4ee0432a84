"""End-to-end federated runs on Ray with the default runtime (synthetic data)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.compose import ConfigError, load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics
from fedhar.checkpoint import load_checkpoint
from strategies.tracking import NoProgress

pytestmark = pytest.mark.e2e

TINY = [
    "dataset.options.num_users=12",  # 10 clients + 2 held-out users
    "dataset.options.seconds_per_user=200",
    "num_rounds=3",
    "train.epochs=3",
    "tracking.progress=false",
    "runtime.round_timeout_s=120",
    "fleet=none",  # every client trains the full model: exact counts below
]
CHANCE = 1 / 7


def _run(tmp_path: Path, name: str, extra: list[str] | None = None) -> tuple[dict, list[dict]]:
    run_dir = tmp_path / name
    summary = run_experiment(load_config(TINY + (extra or [])), run_dir)
    return summary, read_metrics(run_dir)


def _scores(rows: list[dict]) -> list[tuple]:
    """What must be reproducible: everything but wall-clock figures."""
    return [
        (
            r["server_round"],
            r["train"]["train-loss"],
            r["server"],
            r["per_user_summary"],
            r["bytes_up"],
            r["bytes_down"],
        )
        for r in rows
    ]


def test_fedavg_beats_chance_and_writes_outputs(tmp_path: Path) -> None:
    summary, rows = _run(tmp_path, "fedavg")
    assert [r["server_round"] for r in rows] == [1, 2, 3]
    assert rows[-1]["succeeded"] == 10 and rows[-1]["per_user_summary"]["num_users"] == 10
    assert summary["user_mean_f1"] > 2.5 * CHANCE
    assert summary["heldout_macro_f1"] > 1.75 * CHANCE
    run_dir = tmp_path / "fedavg"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "per_user.csv",
        "metrics.png",
        "per_user_f1.png",
        "checkpoint.pt",
        "summary.json",
    ):
        assert (run_dir / name).exists(), name
    per_user_lines = (run_dir / "per_user.csv").read_text().strip().splitlines()
    assert len(per_user_lines) == 1 + 3 * 10


def test_same_seed_same_metrics_and_resume_after_kill(tmp_path: Path) -> None:
    _, first = _run(tmp_path, "first")
    _, second = _run(tmp_path, "second")
    assert _scores(first) == _scores(second)

    run_dir = tmp_path / "killed"
    overrides = [*TINY, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.run", *overrides],
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        checkpoint = load_checkpoint(run_dir) if (run_dir / "checkpoint.pt").exists() else None
        if checkpoint is not None and checkpoint.server_round >= 1:
            break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = load_checkpoint(run_dir)
    assert done is not None and 1 <= done.server_round < 3, "kill landed after the last round"

    summary = run_experiment(load_config(overrides), run_dir)
    assert summary["rounds"] == 3
    assert _scores(read_metrics(run_dir)) == _scores(first)


def test_crashing_client_is_counted_and_round_goes_on(tmp_path: Path) -> None:
    summary, rows = _run(tmp_path, "crash", ["faults.crash_partitions=[0,3]", "num_rounds=2"])
    for row in rows:
        assert row["num_failures"] == 2 and row["succeeded"] == 8
        assert all("simulated crash" in f["reason"] for f in row["failures"])
        assert sorted(f["partition_id"] for f in row["failures"]) == [0, 3]
        assert all(f["user"] and f["user"] in f["reason"] for f in row["failures"])
    assert summary["total_failures"] == 4
    assert summary["user_mean_f1"] > 2 * CHANCE


def test_a_run_whose_every_client_fails_stops_with_the_reason(tmp_path: Path) -> None:
    every = ",".join(str(p) for p in range(10))
    with pytest.raises(
        NoProgress, match=r"rounds 1-2 .*20x SimulatedCrash: simulated crash"
    ) as stop:
        _run(tmp_path, "stalled", [f"faults.crash_partitions=[{every}]",
                                   "runtime.max_failed_rounds=2"])  # fmt: skip
    assert "(0, 0)" in str(stop.value)
    assert [r["server_round"] for r in read_metrics(tmp_path / "stalled")] == [1, 2]
    assert not (tmp_path / "stalled" / "summary.json").exists()  # no summary of a failed run


def test_a_hung_client_times_out_as_a_failure_and_the_round_goes_on(tmp_path: Path) -> None:
    stall_s, timeout_s = 20, 12
    hang = [
        "faults.hang_partitions=[4]",
        f"faults.hang_seconds={stall_s}",
        f"runtime.round_timeout_s={timeout_s}",
    ]
    _, rows = _run(tmp_path, "hang", [*hang, "num_rounds=1", "train.epochs=1"])
    (row,) = rows
    assert row["wall_time_s"] < stall_s  # the round did not wait for the stalled device
    assert row["num_failures"] == 1 and row["succeeded"] == 9
    assert "round timeout" in row["failures"][0]["reason"]
    assert row["per_user_summary"]["num_users"] >= 9


def test_min_available_nodes_above_fleet_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config([*TINY, "strategy.algorithm.min_available_nodes=50"])
    with pytest.raises(ConfigError, match=r"min_available_nodes=50.*only 10 client users"):
        run_experiment(cfg, tmp_path / "too-many")


def test_unknown_strategy_lists_the_options() -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="fedavg"):
        load_config(["strategy=fedsgd_typo"])


def test_summary_json_is_written(tmp_path: Path) -> None:
    summary, _ = _run(tmp_path, "one", ["num_rounds=1"])
    assert json.loads((tmp_path / "one" / "summary.json").read_text()) == summary


def test_multirun_sweep_collects_one_summary_table(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in TINY if not o.startswith("num_rounds")]
    completed = subprocess.run(
        [sys.executable, "-m", "experiments.run", "-m", "strategy=fedavg,fedprox",
         "num_rounds=1", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    with (sweep_dir / "sweep_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["job"] for row in rows] == ["job0", "job1"]
    assert ["strategy=fedprox" in row["overrides"] for row in rows] == [False, True]
    assert all(float(row["user_mean_f1"]) > 0 for row in rows)
    page = (sweep_dir / "report.md").read_text()  # the jobs side by side
    assert "| `job0` | strategy.algorithm._target_=flwr.serverapp.strategy.FedAvg" in page
    assert (sweep_dir / "sweep_over_seeds.csv").exists()
