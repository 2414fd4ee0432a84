"""End-to-end on the Ray runtime: a resumed DP run adds the same noise as an uninterrupted one.

Clients train in other processes, so nothing but the server's own seeding fixes the noise
Flower's DP wrappers draw (numpy's global generator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.compose import load_config
from experiments.run import run_experiment
from fedhar.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e

TINY = [
    "dataset.options.num_users=6",
    "dataset.options.seconds_per_user=60",
    "tracking.progress=false",
    "tracking.plots=false",
    "fleet=none",
    "privacy=client",
    "privacy.noise_multiplier=1.0",
]


def test_a_resumed_dp_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    run_experiment(load_config([*TINY, "num_rounds=3"]), tmp_path / "whole")
    run_experiment(load_config([*TINY, "num_rounds=1"]), tmp_path / "split")
    run_experiment(load_config([*TINY, "num_rounds=3"]), tmp_path / "split")  # resumes
    whole, split = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert whole is not None and split is not None and split.server_round == 3
    for name, value in whole.arrays.items():
        np.testing.assert_array_equal(split.arrays[name], value)
