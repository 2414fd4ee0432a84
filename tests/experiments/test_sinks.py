"""Run outputs: metrics.jsonl, per_user.csv, plots, truncation on resume, offline wandb."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from rich.console import Console

from experiments.sinks import (
    METRICS_FILE,
    RoundProgress,
    RunFiles,
    WandbTracking,
    read_metrics,
    truncate_outputs,
)
from experiments.sweep import (
    collect_summaries,
    over_seeds,
    print_sweep_summary,
    write_over_seeds,
    write_sweep_summary,
)
from fedhar.metrics import UserScore, summarize_users
from fedhar.records import ClientFailure, RoundRecord


def _record(server_round: int) -> RoundRecord:
    scores = (UserScore("u1", "phone", 10, 0.9, 0.8), UserScore("u2", "watch", 12, 0.5, 0.4))
    return RoundRecord(
        server_round=server_round,
        wall_time_s=1.5,
        sampled=3,
        succeeded=2,
        failures=(ClientFailure(7, "simulated crash"),),
        declines=(),
        bytes_down=300,
        bytes_up=200,
        train={"train-loss": 1.0 / server_round},
        server={"macro_f1": 0.1 * server_round},
        federated={"eval-macro-f1": 0.5},
        per_user=scores,
        per_user_summary=summarize_users(list(scores)),
        extra={"fleet/sim_energy_j": 2.0},
    )


def test_run_files_and_truncation(tmp_path: Path) -> None:
    sink = RunFiles(tmp_path)
    for r in (1, 2, 3):
        sink.on_round(_record(r))
    rows = read_metrics(tmp_path)
    assert [r["server_round"] for r in rows] == [1, 2, 3]
    assert rows[0]["num_failures"] == 1 and rows[0]["failures"][0]["reason"] == "simulated crash"
    assert rows[0]["per_user_summary"]["worst10_f1"] == 0.4
    assert (tmp_path / "metrics.png").stat().st_size > 0
    assert (tmp_path / "per_user_f1.png").stat().st_size > 0
    assert len((tmp_path / "per_user.csv").read_text().splitlines()) == 1 + 3 * 2
    truncate_outputs(tmp_path, 1)
    assert [r["server_round"] for r in read_metrics(tmp_path)] == [1]
    assert len((tmp_path / "per_user.csv").read_text().splitlines()) == 1 + 2


def test_progress_bar_counts_rounds_with_an_eta_and_the_latest_scores() -> None:
    console = Console(record=True, width=120, force_terminal=False)
    progress = RoundProgress(total_rounds=5, rounds_done=1, console=console)  # a resumed run
    progress.on_round(_record(2))
    progress.close()
    text = console.export_text()
    assert "round 2/5" in text and "eta" in text
    assert "user F1 0.600 held-out F1 0.200" in text
    lines = [line for line in text.splitlines() if "round 2/5" in line]
    assert lines and "━" in lines[-1]  # the bar itself


def test_per_user_csv_has_one_row_per_user_and_round(tmp_path: Path) -> None:
    RunFiles(tmp_path).on_round(_record(1))
    header, *rows = (tmp_path / "per_user.csv").read_text().splitlines()
    assert header.split(",")[:6] == ["server_round", "user", "device", "num_windows", "accuracy",
                                     "macro_f1"]  # fmt: skip
    assert [row.split(",")[1:3] for row in rows] == [["u1", "phone"], ["u2", "watch"]]


def test_wandb_logs_offline_without_an_account(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    RunFiles(tmp_path).on_round(_record(1))  # the plots wandb picks up
    sink = WandbTracking(tmp_path, "fedhar-test", {"seed": 0}, mode="offline")
    logged: list[dict] = []
    log = sink.run.log
    monkeypatch.setattr(
        sink.run, "log", lambda data, step: (logged.append(data), log(data, step=step))
    )
    sink.on_round(_record(1))
    sink.close()
    assert logged[0]["server/macro_f1"] == 0.1
    assert abs(logged[0]["per_user_summary/mean_f1"] - 0.6) < 1e-9
    assert logged[0]["extra/fleet/sim_energy_j"] == 2.0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("run-*.wandb"))
    assert any((runs[0] / "files" / "media").rglob("*.png"))


def test_sweep_summary_collects_every_finished_job(tmp_path: Path) -> None:
    for job, f1 in (("seed=0", 0.5), ("seed=1", 0.7)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "summary.json").write_text(json.dumps({"heldout_macro_f1": f1}))
    (tmp_path / "seed=2").mkdir()  # a job that died before finishing
    assert [r["job"] for r in collect_summaries(tmp_path)] == ["seed=0", "seed=1"]
    table = write_sweep_summary(tmp_path).read_text().splitlines()
    assert table == ["job,heldout_macro_f1", "seed=0,0.5", "seed=1,0.7"]


def test_a_torn_last_metrics_line_is_dropped_and_a_broken_middle_one_named(
    tmp_path: Path, caplog
) -> None:
    good = [json.dumps({"server_round": r}) for r in (1, 2)]
    (tmp_path / METRICS_FILE).write_text("\n".join([*good, '{"server_round": 3, "lo']))
    with caplog.at_level(logging.WARNING, logger="fedhar"):
        assert [r["server_round"] for r in read_metrics(tmp_path)] == [1, 2]
    assert "line 3 is torn" in caplog.text
    (tmp_path / METRICS_FILE).write_text("\n".join([good[0], "{oops", good[1]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2 is not JSON"):
        read_metrics(tmp_path)


def test_sweep_scores_are_averaged_over_the_seeds_of_each_setting(tmp_path: Path) -> None:
    jobs = {"job0": ("seed=0 strategy=fedavg", 0.5), "job1": ("seed=1 strategy=fedavg", 0.7),
            "job2": ("seed=0 strategy=fedprox", 0.4)}  # fmt: skip
    for job, (overrides, f1) in jobs.items():
        (tmp_path / job).mkdir()
        summary = {"overrides": overrides, "heldout_macro_f1": f1, "user_mean_f1": None}
        (tmp_path / job / "summary.json").write_text(json.dumps(summary))
    rows = {r["setting"]: r for r in over_seeds(collect_summaries(tmp_path))}
    assert rows["strategy=fedavg"]["seeds"] == 2
    assert rows["strategy=fedavg"]["heldout_macro_f1_mean"] == pytest.approx(0.6)
    assert rows["strategy=fedavg"]["heldout_macro_f1_std"] == pytest.approx(0.1414214)
    assert rows["strategy=fedprox"]["heldout_macro_f1_std"] is None  # one seed: no spread
    assert rows["strategy=fedavg"]["user_mean_f1_mean"] is None
    lines = write_over_seeds(tmp_path).read_text().splitlines()
    assert lines[0].startswith("setting,seeds,heldout_macro_f1_mean,heldout_macro_f1_std")
    console = Console(record=True, width=200)
    print_sweep_summary(tmp_path, console)
    assert "0.600 ± 0.141" in console.export_text()
