"""The fast runtime against Flower's run_simulation, hung clients on it, and a Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.compose import ConfigError, load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics
from fedhar.checkpoint import load_checkpoint

SMALL = [
    "dataset.options.num_users=12",  # 10 clients + 2 held-out users
    "dataset.options.seconds_per_user=120",
    "train.epochs=1",
    "tracking.progress=false",
    "tracking.plots=false",
    "runtime.round_timeout_s=120",
]


def _run(run_dir: Path, overrides: list[str]) -> list[dict]:
    run_experiment(load_config([*SMALL, *overrides]), run_dir)
    return read_metrics(run_dir)


def test_an_unknown_backend_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown runtime\.backend 'dask'; choose one of"):
        run_experiment(load_config([*SMALL, "runtime.backend=dask"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_fast_path_and_run_simulation_aggregate_the_same_model(tmp_path: Path) -> None:
    # a mixed fleet (QAT microcontrollers, drop-outs) and half the clients sampled per round
    same = ["num_rounds=2", "fleet=mixed", "strategy.algorithm.fraction_train=0.5",
            "strategy.algorithm.fraction_evaluate=0.5"]  # fmt: skip
    fast = _run(tmp_path / "fast", [*same, "runtime.backend=ray-fast"])
    flower = _run(tmp_path / "flower", [*same, "runtime.backend=flower"])
    a, b = load_checkpoint(tmp_path / "fast"), load_checkpoint(tmp_path / "flower")
    assert a is not None and b is not None and a.server_round == b.server_round == 2
    assert a.arrays.keys() == b.arrays.keys()
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)  # bit for bit
    for x, y in zip(fast, flower, strict=True):
        for key in ("sampled", "succeeded", "train", "server", "federated", "per_user_summary",
                    "bytes_up", "bytes_down", "declines"):  # fmt: skip
            if key == "train":
                x[key].pop("compute-seconds"), y[key].pop("compute-seconds")
            assert x[key] == y[key], key
    assert any(k.startswith("runtime/ray-node/") for k in fast[0]["extra"])


@pytest.mark.e2e
def test_a_hung_client_costs_only_itself_even_in_a_large_batch(tmp_path: Path) -> None:
    # 16 messages per call: the hung client shares its batch with every other client; the
    # timeout leaves the others room on a loaded 2-core machine, the hang outlasts both rounds
    overrides = ["num_rounds=2", "fleet=none", "faults.hang_partitions=[0]",
                 "faults.hang_seconds=180", "runtime.round_timeout_s=20",
                 "runtime.messages_per_call=16"]  # fmt: skip
    rows = _run(tmp_path / "hang", overrides)
    for row in rows:
        assert row["wall_time_s"] < 90  # neither round waited for the stalled device
        assert row["num_failures"] == 1 and row["succeeded"] == 9, row["failures"]
        assert "round timeout" in row["failures"][0]["reason"]


def _ray(*args: str) -> None:
    ray = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    subprocess.run([str(ray), *args], check=True, capture_output=True, timeout=120, env=env)


@pytest.mark.e2e
def test_a_run_on_a_two_node_ray_cluster_uses_both_nodes(tmp_path: Path) -> None:
    port = "6389"
    small_store = ["--object-store-memory=200000000", "--num-cpus=1", "--disable-usage-stats"]
    _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=false", *small_store)  # fmt: skip
    try:
        _ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
             *small_store)  # fmt: skip
        rows = _run(
            tmp_path / "cluster",
            ["num_rounds=2", "fleet=none", f"runtime.ray_address=127.0.0.1:{port}"],
        )
    finally:
        _ray("stop", "--force")
    for row in rows:
        nodes = {k: v for k, v in row["extra"].items() if k.startswith("runtime/ray-node/")}
        assert len(nodes) == 2 and all(v > 0 for v in nodes.values()), nodes
        assert row["succeeded"] == 10
