"""The composition root owns the strategy stack: its order, its checks, Flower's wrappers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from experiments import flower_app
from experiments.compose import ConfigError, build_stack, federation_spec, load_config
from fedhar.checkpoint import load_checkpoint
from fedhar.federation import load_federation
from fedhar.models import build_model
from fedhar.seeding import seed_everything
from fedhar.transport.keystore import RunKeys
from strategies.checkpointing import Checkpointing
from strategies.compression import CompressedUpdates
from strategies.encryption import EncryptedTransport
from strategies.fleet import FleetSimulation
from strategies.run_info import RunInfo
from strategies.sanitize import SanitizedUpdates
from strategies.tracking import Tracking
from strategies.wrapper import wrapper_chain

SMALL = ["dataset.options.num_users=5", "dataset.options.seconds_per_user=60"]
DP = "flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping"


def _stack(overrides: list[str], tmp_path: Path) -> list[type]:
    cfg = load_config([*SMALL, *overrides])
    federation = load_federation(federation_spec(cfg))
    stack = build_stack(
        cfg, federation, RunInfo("r", 0, tmp_path, key_store=RunKeys(tmp_path)), sinks=[]
    )
    return [type(layer) for layer in wrapper_chain(stack)]


def test_the_stack_runs_outer_to_inner_from_checkpointing_to_the_algorithm(tmp_path) -> None:
    layers = _stack(["fleet=mixed", "wrappers=[compression,encryption]"], tmp_path)
    assert layers == [
        Checkpointing,
        Tracking,
        FleetSimulation,
        EncryptedTransport,
        CompressedUpdates,
        SanitizedUpdates,
        FedAvg,
    ]
    assert _stack(["fleet=none"], tmp_path) == [Checkpointing, Tracking, SanitizedUpdates, FedAvg]


def test_a_wrapper_order_that_cannot_work_is_refused_with_the_order_that_does(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"encryption must wrap compression.*"
                       r"use wrappers=\[compression,encryption\]"):  # fmt: skip
        _stack(["wrappers=[encryption,compression]"], tmp_path)
    dp_outside = [f"+wrappers.dp.server._target_={DP}", "wrappers=[compression]"]
    with pytest.raises(ConfigError, match=r"use wrappers=\[dp,compression\]"):
        _stack(dp_outside, tmp_path)


def _dp(clipping_norm: float) -> list[str]:
    return [
        f"+wrappers.dp.server._target_={DP}",
        "+wrappers.dp.server.noise_multiplier=0.0",
        f"+wrappers.dp.server.clipping_norm={clipping_norm}",
        "+wrappers.dp.server.num_sampled_clients=4",
    ]


def _run(tmp_path: Path, in_process_grid, overrides: list[str]) -> dict[str, np.ndarray]:
    base = [*SMALL, "num_rounds=2", "fleet=none", "tracking.progress=false",
            "tracking.plots=false", "train.epochs=1"]  # fmt: skip
    run_config = {"experiment": "", "overrides": " ".join([*base, *overrides]),
                  "run-dir": str(tmp_path)}  # fmt: skip
    grid = in_process_grid(flower_app.client_app, num_nodes=4, run_config=run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    flower_app.main(grid, context)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.server_round == 2
    return checkpoint.arrays


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """L2 distance over parameters and BatchNorm statistics (not the step counters)."""
    floats = [k for k in a if not k.endswith("num_batches_tracked")]
    return float(np.sqrt(sum(((a[k] - b[k]).astype(np.float64) ** 2).sum() for k in floats)))


def test_flowers_own_dp_wrapper_can_be_listed_in_wrappers(tmp_path, in_process_grid) -> None:
    cfg = load_config([*SMALL, *_dp(0.01)])
    federation = load_federation(federation_spec(cfg))
    stack = build_stack(
        cfg, federation, RunInfo("r", 0, tmp_path, key_store=RunKeys(tmp_path)), sinks=[]
    )
    assert DifferentialPrivacyServerSideFixedClipping in [type(s) for s in wrapper_chain(stack)]
    plain = _run(tmp_path / "plain", in_process_grid, [])
    clipped = _run(tmp_path / "clipped", in_process_grid, _dp(0.01))
    unclipped = _run(tmp_path / "unclipped", in_process_grid, _dp(1e9))
    # without noise, clipping at 1e9 changes nothing; at 0.01 every round moves the model by
    # at most 0.01 (the average of clipped updates), so two rounds stay within 0.02
    assert _distance(unclipped, plain) < 1e-4
    initial = _initial_arrays()
    assert _distance(clipped, initial) <= 0.02 + 1e-6
    assert _distance(plain, initial) > 0.5


def _initial_arrays() -> dict[str, np.ndarray]:
    """The runs' round-0 model, built the way the server builds it (seeded, then built)."""
    cfg = load_config(SMALL)
    federation = load_federation(federation_spec(cfg))
    seed_everything(cfg.seed)
    model = build_model(cfg.model.name, federation.in_channels, federation.num_classes)
    return {k: v.numpy() for k, v in model.state_dict().items()}
