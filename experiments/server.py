"""The server side of a run: resume or start, wrap the strategy, and drive its rounds."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from clients.app import ClientSettings
from clients.state_store import STATE_DIR
from experiments.compose import (
    ConfigError,
    build_stack,
    client_settings,
    federation_spec,
    fleet_config,
    run_keys,
)
from experiments.report import summarize_run
from experiments.run_dirs import numbers_config
from experiments.sinks import (
    METRICS_FILE,
    PER_USER_FILE,
    RoundProgress,
    RunFiles,
    WandbTracking,
    truncate_outputs,
)
from experiments.validate import validate_config
from fedhar.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    check_checkpoint_matches,
    load_checkpoint,
)
from fedhar.federation import Federation, load_federation
from fedhar.models import build_model
from fedhar.records import RoundSink
from fedhar.seeding import seed_everything
from fedhar.transport.keystore import KEYS_DIR
from fedhar.wire import numpy_to_arrays, state_to_arrays
from strategies.checkpointing import restore_state
from strategies.deadline import DeadlineGrid
from strategies.enrollment import enroll
from strategies.grid_proxy import screening
from strategies.privacy import BudgetExhausted
from strategies.run_info import RunInfo
from strategies.tracking import Tracking
from strategies.wrapper import wrapper_chain

log = logging.getLogger("fedhar")
FLEET_SETTLE_S = 15.0  # a fleet short of nodes for this long is not still starting


@dataclass
class ServerRun:
    """A prepared run: the wrapped strategy and where it starts from."""

    cfg: DictConfig
    run_dir: Path
    run: RunInfo
    settings: ClientSettings
    num_clients: int
    strategy: Strategy
    initial_arrays: ArrayRecord
    rounds_done: int
    sinks: list[RoundSink]
    server_fingerprint: str  # of the server's key: what the clients pin

    def serve(
        self, grid: Grid, runtime_stats: Callable[[], dict[str, float]] | None = None
    ) -> None:
        """Enroll the fleet once, then run the remaining rounds on ``grid``.

        ``runtime_stats`` (a runtime's per-round figures, e.g. where clients ran) join every
        round's record.
        """
        cfg = self.cfg
        round_grid = grid
        for layer in wrapper_chain(self.strategy):
            if isinstance(layer, Tracking):
                layer.runtime_stats = runtime_stats
                if layer.clock is not None:  # one deadline per round: train and evaluate
                    round_grid = DeadlineGrid(grid, layer.clock)
        round_grid = screening(round_grid, self.strategy)  # forged replies become failures
        width = float(cfg.model.width)
        train_config = ConfigRecord(
            {
                "epochs": cfg.train.epochs,
                "batch-size": cfg.train.batch_size,
                "lr": cfg.train.lr,
                "width": width,
            }
        )
        wait_for_fleet(grid, self.num_clients, cfg.runtime.round_timeout_s)
        enroll(grid, self.run, cfg.runtime.round_timeout_s)
        if runtime_stats is not None:
            runtime_stats()  # rounds count their own messages, not enrollment's
        try:
            self.strategy.start(
                grid=round_grid,
                initial_arrays=self.initial_arrays,
                num_rounds=cfg.num_rounds - self.rounds_done,
                timeout=cfg.runtime.round_timeout_s,
                train_config=train_config,
                evaluate_config=ConfigRecord({"width": width}),
            )
        except BudgetExhausted as stop:  # every completed round is checkpointed already
            log.warning("privacy budget reached: %s", stop)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def finish(self, overrides: list[str] | None = None) -> dict[str, Any]:
        """Write and return ``summary.json``; ``overrides`` label sweep jobs."""
        summary = {"overrides": " ".join(overrides or []), **summarize_run(self.run_dir)}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def prepare_run(cfg: DictConfig, run_dir: Path) -> ServerRun:
    """Compose the run in ``run_dir``: fresh, or resumed from its checkpoint."""
    validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    _quiet_logs(cfg.runtime.verbose)
    if cfg.resume and (run_dir / CHECKPOINT_NAME).exists():
        check_resumable(cfg, run_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    federation = load_federation(federation_spec(cfg))
    catalogue, _ = fleet_config(cfg)
    checkpoint, initial_arrays = _start_state(cfg, run_dir, federation)
    rounds_done = 0 if checkpoint is None else checkpoint.server_round
    key_store = run_keys(cfg, run_dir)
    run = RunInfo(
        run_id=checkpoint.run_id if checkpoint and checkpoint.run_id else secrets.token_hex(16),
        seed=cfg.seed,
        run_dir=run_dir,
        device_kinds={name: profile.kind for name, profile in catalogue.items()},
        key_store=key_store,
    )
    sinks = _sinks(cfg, run_dir, rounds_done)
    strategy = build_stack(cfg, federation, run, sinks, rounds_done)
    if checkpoint is not None:
        restore_state(strategy, checkpoint.strategy_state)
        if rounds_done >= cfg.num_rounds:
            log.warning(
                "%s already holds all %d rounds; showing them (resume=false starts over)",
                run_dir,
                rounds_done,
            )
        else:
            log.warning("resuming %s after round %d", run_dir, rounds_done)
    return ServerRun(
        cfg=cfg,
        run_dir=run_dir,
        run=run,
        settings=client_settings(cfg, federation, run_dir),
        num_clients=len(federation.clients),
        strategy=strategy,
        initial_arrays=initial_arrays,
        rounds_done=rounds_done,
        sinks=sinks,
        server_fingerprint=key_store.publish_server_fingerprint(),
    )


def check_resumable(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume a run directory under a config that would change its numbers."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved_cfg = OmegaConf.load(saved_path)
    assert isinstance(saved_cfg, DictConfig)
    kept, now = numbers_config(saved_cfg), numbers_config(cfg)
    changed = sorted(k for k in kept.keys() | now.keys() if kept.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({', '.join(changed[:5])}); "
            "resume it with the same config, pass resume=false to start over, or choose "
            "another hydra.run.dir"
        )


def wait_for_fleet(
    grid: Grid, num_nodes: int, timeout_s: float, settle_s: float = FLEET_SETTLE_S
) -> None:
    """Block until every simulated node has registered, so round 1 samples the whole fleet.

    Flower samples from the nodes registered so far; without this wait, round 1 would depend
    on how fast the runtime starts its nodes. A fleet whose size stays below ``num_nodes``
    for ``settle_s`` seconds will not grow (e.g. ``flwr run`` with too few SuperNodes): that
    is an error at once, not a wait for the whole timeout.
    """
    deadline = time.monotonic() + timeout_s
    seen, since = 0, time.monotonic()
    while (registered := len(list(grid.get_node_ids()))) < num_nodes:
        now = time.monotonic()
        if registered != seen:
            seen, since = registered, now
        if registered and now - since > settle_s:
            raise ConfigError(
                f"the federation has {num_nodes} client users but only {registered} nodes "
                f"registered; run {num_nodes} simulated nodes (flwr run: set "
                f"options.num-supernodes = {num_nodes} in the federation's config)"
            )
        if now > deadline:
            raise TimeoutError(
                f"only {registered} of {num_nodes} nodes registered within {timeout_s:.0f} s; "
                "raise runtime.round_timeout_s or check the Ray resources"
            )
        time.sleep(0.05)


def _sinks(cfg: DictConfig, run_dir: Path, rounds_done: int) -> list[RoundSink]:
    sinks: list[RoundSink] = [RunFiles(run_dir, plots=cfg.tracking.plots)]
    if cfg.tracking.wandb:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(resolved, dict)
        config = {str(key): value for key, value in resolved.items()}
        sinks.append(WandbTracking(run_dir, cfg.tracking.project, config, cfg.tracking.wandb_mode))
    if cfg.tracking.progress:
        sinks.append(RoundProgress(cfg.num_rounds, rounds_done))
    return sinks


def _quiet_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("flwr").setLevel(level)
    logging.getLogger("ray").setLevel(level)


RUN_STATE = (CHECKPOINT_NAME, METRICS_FILE, PER_USER_FILE, "summary.json")  # what resume reads


def clear_run_state(run_dir: Path) -> None:
    """Forget an earlier run in ``run_dir``: its checkpoint, records, clients' saved state
    and keys."""
    for name in RUN_STATE:
        (run_dir / name).unlink(missing_ok=True)
    for folder in (STATE_DIR, KEYS_DIR):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def _start_state(
    cfg: DictConfig, run_dir: Path, federation: Federation
) -> tuple[Checkpoint | None, ArrayRecord]:
    """(the checkpoint resumed from, or None; the initial arrays: the checkpoint's or fresh)."""
    if not cfg.resume:
        clear_run_state(run_dir)
    checkpoint = load_checkpoint(run_dir)
    seed_everything(cfg.seed)
    model = build_model(
        cfg.model.name, federation.in_channels, federation.num_classes, cfg.model.width
    )
    if checkpoint is not None:
        shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        check_checkpoint_matches(run_dir, checkpoint, shapes)
        truncate_outputs(run_dir, checkpoint.server_round)
        return checkpoint, numpy_to_arrays(checkpoint.arrays)
    truncate_outputs(run_dir, 0)
    return None, state_to_arrays(model.state_dict())
