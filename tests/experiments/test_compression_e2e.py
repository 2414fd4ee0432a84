"""End-to-end: int8 compressed transport still learns and shrinks the uplink about 4x."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.compose import load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics

pytestmark = pytest.mark.e2e

TINY = [
    "dataset.options.num_users=12",  # 10 clients + 2 held-out users
    "dataset.options.seconds_per_user=200",
    "num_rounds=3",
    "train.epochs=3",
    "tracking.progress=false",
    "tracking.plots=false",
    "runtime.round_timeout_s=120",
    "fleet=none",  # every client trains the full model in fp32
]
CHANCE = 1 / 7


def test_int8_transport_learns_with_about_four_times_fewer_bytes_up(tmp_path: Path) -> None:
    plain = run_experiment(load_config(TINY), tmp_path / "plain")
    summary = run_experiment(load_config([*TINY, "wrappers=[compression]"]), tmp_path / "int8")
    rows = read_metrics(tmp_path / "int8")
    assert summary["user_mean_f1"] > 2.5 * CHANCE
    assert summary["heldout_macro_f1"] > 1.75 * CHANCE
    assert all(r["extra"]["compression/rejected"] == 0.0 for r in rows)
    assert all(r["succeeded"] == 10 for r in rows)
    # Tracking's byte count is exactly the payloads the wrapper accepted
    assert [r["bytes_up"] for r in rows] == [r["extra"]["compression/bytes-up"] for r in rows]
    assert plain["bytes_up"] / summary["bytes_up"] >= 3.9  # vs the plain ArrayRecord uplink
    fp32_same_framing = sum(r["extra"]["compression/bytes-up-fp32"] for r in rows)
    assert fp32_same_framing / summary["bytes_up"] >= 3.9
