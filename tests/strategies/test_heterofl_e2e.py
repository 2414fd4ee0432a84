"""HeteroFL end to end on a mixed fleet: MCUs train narrow slices, phones the full model."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.compose import load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics
from fedhar.partial.evaluate import width_key
from fedhar.partial.widths import WIDTH_LEVELS

pytestmark = pytest.mark.e2e

OVERRIDES = [
    "dataset.options.num_users=12",  # 10 clients + 2 held-out users
    "dataset.options.seconds_per_user=120",
    "num_rounds=2",
    "train.epochs=1",
    "tracking.progress=false",
    "tracking.plots=false",
    "runtime.round_timeout_s=300",
    "strategy=heterofl",
    "fleet=mixed",
    "model=deepconvlstm",  # fp32 DeepConvLSTM fits MCUs only at width 0.25
    "quant.enabled=false",
]


def test_heterofl_aggregates_every_width_without_rejections(tmp_path: Path) -> None:
    cfg = load_config(OVERRIDES)
    assert cfg.strategy.evaluate_widths is True
    summary = run_experiment(cfg, tmp_path / "heterofl")
    rows = read_metrics(tmp_path / "heterofl")
    assert [r["server_round"] for r in rows] == [1, 2]
    for row in rows:
        extra = row["extra"]
        assert extra["partial/rejected"] == 0
        assert row["succeeded"] >= 2
        # every update trains the head's leading slice; last-k plans leave the first conv out
        assert extra["partial/contributors/head"] == row["succeeded"]
        assert 1 <= extra["partial/contributors/convs.0"] <= row["succeeded"]
        # the held-out users score every width the strategy hands out; width 1.0 is the model
        server = row["server"]
        for width in WIDTH_LEVELS:
            assert 0.0 <= server[width_key(width, "macro_f1")] <= 1.0, width
            assert 0.0 <= server[width_key(width, "accuracy")] <= 1.0, width
        assert server[width_key(1.0, "macro_f1")] == pytest.approx(server["macro_f1"])
    assert summary["user_mean_f1"] is not None


def test_heterofl_static_batchnorm_queries_every_contributor(tmp_path: Path) -> None:
    overrides = [o for o in OVERRIDES if not o.startswith(("model=", "num_rounds="))]
    cfg = load_config([*overrides, "model=dscnn", "num_rounds=1"])
    assert cfg.strategy.algorithm.static_bn and cfg.strategy.algorithm.scaler
    run_experiment(cfg, tmp_path / "sbn")
    (row,) = read_metrics(tmp_path / "sbn")
    assert row["extra"]["partial/bn-stats/answers"] == row["succeeded"] >= 2
    assert "partial/bn-stats/failed" not in row["extra"]
    for width in WIDTH_LEVELS:  # every width is scored with its own statistics
        assert row["server"][width_key(width, "macro_f1")] > 0.0, width
