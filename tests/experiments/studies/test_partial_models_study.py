"""The partial-model study's width scores: what the run's last round logged, per width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.sinks import METRICS_FILE
from experiments.studies.partial_models import width_scores


def _write_rounds(run_dir: Path, rounds: list[dict[str, float]]) -> None:
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"server_round": i + 1, "server": s}) for i, s in enumerate(rounds)]
    (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n")


def test_widths_are_read_from_the_last_logged_round(tmp_path: Path) -> None:
    _write_rounds(
        tmp_path / "run",
        [
            {"macro_f1": 0.1, "width_0.25/macro_f1": 0.05},
            {"macro_f1": 0.4, "width_0.25/macro_f1": 0.31, "width_1/macro_f1": 0.4},
        ],
    )
    scores = width_scores(["strategy=heterofl"], tmp_path / "run")
    assert scores == {"width_0.25/macro_f1": 0.31, "width_1/macro_f1": 0.4}


def test_a_personal_head_strategy_reports_no_widths(tmp_path: Path) -> None:
    assert width_scores(["strategy=fedper"], tmp_path / "never-run") == {}


def test_a_run_without_rounds_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics"):
        width_scores(["strategy=heterofl"], tmp_path / "empty")
