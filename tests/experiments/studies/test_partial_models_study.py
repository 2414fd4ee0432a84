"""The partial-model study: the width scores its runs logged, the clients behind each width, and
every width scored with per-window BatchNorm from the run's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.compose import federation_spec, load_config
from experiments.sinks import METRICS_FILE
from experiments.studies.partial_models import (
    ClientPlan,
    census_line,
    per_window_scores,
    smallest_common_width,
    widest_plans,
    width_census,
    width_scores,
)
from fedhar.checkpoint import Checkpoint, save_checkpoint
from fedhar.federation import load_federation
from fedhar.models import build_model
from fedhar.partial.evaluate import per_window_batchnorm
from fedhar.partial.spec import extract, slice_width
from fedhar.train import evaluate


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


def test_the_census_lists_each_clients_batch_at_its_widest_level_only() -> None:
    plans = [ClientPlan(w, b) for w, b in [(0.5, 1), (1.0, 32), (0.5, 2), (0.75, 4), (0.0, 0)]]
    census = width_census(plans)
    assert census == {0.25: [], 0.5: [1, 2], 0.75: [4], 1.0: [32]}  # none for the idle client
    assert census_line(census) == (
        "0.25: 0 clients, 0.5: 2 clients (batch 1, 2), 0.75: 1 client (batch 4), "
        "1: 1 client (batch 32)"
    )


def test_an_all_phone_fleet_holds_every_client_at_full_width_and_full_batch() -> None:
    plans = widest_plans(["fleet=all_phone", "model=dscnn", "dataset=synthetic"])
    assert plans == [ClientPlan(1.0, 32)] * 10  # the configured batch, which phones afford
    assert smallest_common_width(plans, "all_phone", "dscnn") == 1.0


def test_microcontrollers_train_their_widest_width_on_tiny_batches() -> None:
    plans = widest_plans(["fleet=mcu_heavy", "model=dscnn", "dataset=synthetic"])
    narrow = [plan.batch_size for plan in plans if plan.width == 0.5]
    assert narrow == [1, 1, 1]  # the ESP32s and the STM32F446: one window per batch


def test_a_fleet_where_no_device_trains_is_named() -> None:
    with pytest.raises(ValueError, match="no device of fleet mcu_heavy can train lstm_big"):
        smallest_common_width([ClientPlan(0.0, 0)] * 2, "mcu_heavy", "lstm_big")


def test_per_window_scores_need_a_checkpoint(tmp_path: Path) -> None:
    assert per_window_scores(["strategy=fedper"], tmp_path / "never-run") == {}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        per_window_scores(["strategy=heterofl"], tmp_path)


def _checkpointed(run_dir: Path, overrides: list[str], width: float) -> torch.nn.Module:
    federation = load_federation(federation_spec(load_config(overrides)))
    torch.manual_seed(7)
    model = build_model("dscnn", federation.in_channels, federation.num_classes, width)
    arrays = {name: value.numpy() for name, value in model.state_dict().items()}
    run_dir.mkdir()
    save_checkpoint(run_dir, Checkpoint(server_round=1, arrays=arrays, strategy_state={}))
    return model


def _holdout_f1(overrides: list[str], model: torch.nn.Module) -> float:
    federation = load_federation(federation_spec(load_config(overrides)))
    holdout = federation.holdout
    windowed = per_window_batchnorm(model)
    return evaluate(windowed, holdout.x, holdout.y, federation.num_classes).macro_f1


def test_per_window_scores_of_a_small_common_model_score_that_model(tmp_path: Path) -> None:
    overrides = ["dataset=synthetic", "model=dscnn", "strategy=fedavg", "model.width=0.5"]
    model = _checkpointed(tmp_path / "run", overrides, 0.5)
    scores = per_window_scores(overrides, tmp_path / "run")
    assert scores == {"width_0.5/macro_f1": pytest.approx(_holdout_f1(overrides, model))}


def test_per_window_scores_of_a_mixed_model_score_its_leading_slices(tmp_path: Path) -> None:
    overrides = ["dataset=synthetic", "model=dscnn", "strategy=heterofl"]
    full = _checkpointed(tmp_path / "run", overrides, 1.0)
    small = build_model("dscnn", 6, 7, 0.25)
    small.load_state_dict(extract(full.state_dict(), slice_width(full, small, 0.25)))
    scores = per_window_scores(overrides, tmp_path / "run")
    assert set(scores) == {f"width_{w:g}/macro_f1" for w in (0.25, 0.5, 0.75, 1.0)}
    assert scores["width_1/macro_f1"] == pytest.approx(_holdout_f1(overrides, full))
    assert scores["width_0.25/macro_f1"] == pytest.approx(_holdout_f1(overrides, small))
