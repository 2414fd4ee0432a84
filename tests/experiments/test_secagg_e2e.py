"""End-to-end on the Ray runtime: secure aggregation aggregates what the plain run does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.compose import load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics
from fedhar.checkpoint import load_checkpoint
from fedhar.transport.masking import RingSpec

pytestmark = pytest.mark.e2e

TINY = [
    "dataset.options.num_users=10",  # 8 clients + 2 held-out users
    "dataset.options.seconds_per_user=120",
    "num_rounds=1",
    "tracking.progress=false",
    "tracking.plots=false",
    "runtime.round_timeout_s=120",
    "fleet=none",
    "faults.crash_partitions=[3]",  # one client crashes: it drops out after sharing keys
]


def test_a_secagg_run_aggregates_like_the_plain_run_within_one_quantization_step(
    tmp_path: Path,
) -> None:
    run_experiment(load_config(TINY), tmp_path / "plain")
    run_experiment(load_config([*TINY, "wrappers=[secagg]"]), tmp_path / "secagg")
    [row] = read_metrics(tmp_path / "secagg")
    extra = row["extra"]
    assert extra["secagg/accepted"] == 7 and extra["secagg/rejected"] == 0
    assert extra["secagg/clipped"] == 0 and row["num_failures"] == 1
    plain, secure = load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "secagg")
    assert plain is not None and secure is not None
    step = RingSpec.for_cohort(8, 16, 4.0, 65536).step  # the config's defaults
    for name, expected in plain.arrays.items():
        if np.issubdtype(expected.dtype, np.floating) and "num_batches" not in name:
            # each client's stochastic rounding errs by under one step; so does their average
            np.testing.assert_allclose(secure.arrays[name], expected, rtol=0, atol=step * 1.01)
    assert any(not np.array_equal(secure.arrays[n], plain.arrays[n]) for n in plain.arrays)
