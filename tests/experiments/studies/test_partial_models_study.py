"""The partial-model study's width scores: what the run's last round logged, per width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.sinks import METRICS_FILE
from experiments.studies.partial_models import (
    smallest_common_width,
    widest_widths,
    width_census,
    width_scores,
)


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


def test_the_census_counts_each_client_at_its_widest_level_only() -> None:
    census = width_census([0.5, 1.0, 0.5, 0.75, 0.0, 1.0, 1.0])
    assert census == {0.25: 0, 0.5: 2, 0.75: 1, 1.0: 3}  # the client that cannot train: none


def test_an_all_phone_fleet_holds_every_client_at_full_width() -> None:
    widths = widest_widths(["fleet=all_phone", "model=dscnn", "dataset=synthetic"])
    assert len(widths) == 10 and set(widths) == {1.0}
    assert smallest_common_width(widths, "all_phone", "dscnn") == 1.0


def test_a_fleet_where_no_device_trains_is_named() -> None:
    with pytest.raises(ValueError, match="no device of fleet mcu_heavy can train lstm_big"):
        smallest_common_width([0.0, 0.0], "mcu_heavy", "lstm_big")
