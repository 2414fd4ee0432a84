"""The composition root: a Hydra config in, a federated run on Flower's simulation runtime out.

``fedhar`` (the console command) runs this with ``configs/config.yaml``; every group can be
overridden on the command line, e.g. ``fedhar strategy=fedprox dataset=sp_sw_har num_rounds=20``
and sweeps run with ``-m``.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.simulation import run_simulation
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clients.app import ClientSettings, make_client_app
from experiments.report import print_summary, summarize_run
from experiments.sinks import RoundProgress, RunFiles, WandbTracking, truncate_outputs
from fedhar.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedhar.devices import DeviceProfile, FleetSpec, assign_devices, load_catalogue
from fedhar.federation import Federation, FederationSpec, load_federation
from fedhar.keys import DeviceIdentity
from fedhar.models import build_model
from fedhar.ondevice import QuantSettings
from fedhar.records import RoundSink
from fedhar.sensors import SensorVariability
from fedhar.train import evaluate, seed_everything
from fedhar.wire import arrays_to_state, numpy_to_arrays, state_to_arrays
from strategies.checkpointing import Checkpointing, restore_state
from strategies.fleet import FleetDirectory, FleetSimulation, RunInfo
from strategies.tracking import ServerEvaluate, Tracking

log = logging.getLogger("fedhar")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/config.yaml`` with Hydra overrides, outside ``@hydra.main``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


class ConfigError(ValueError):
    """A config value that cannot work; the message says which and how to fix it."""


def federation_spec(cfg: DictConfig) -> FederationSpec:
    options = OmegaConf.to_container(cfg.dataset.options, resolve=True)
    assert isinstance(options, dict)
    return FederationSpec(
        dataset=cfg.dataset.name,
        options=FederationSpec.options_from({str(k): v for k, v in options.items()}),
        holdout_fraction=cfg.federation.holdout_fraction,
        test_fraction=cfg.federation.test_fraction,
        gap_s=cfg.federation.gap_s,
        seed=cfg.seed,
    )


def fleet_config(cfg: DictConfig) -> tuple[dict[str, DeviceProfile], FleetSpec | None]:
    """The device catalogue and fleet spec, or ({}, None) for a run without devices."""
    fleet = cfg.get("fleet") or {}
    if not fleet.get("mix") and not fleet.get("device_map"):
        return {}, None
    catalogue = load_catalogue(_plain(fleet.devices))
    return catalogue, FleetSpec.from_mapping(_plain(fleet))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True)


def client_settings(cfg: DictConfig, federation: Federation) -> ClientSettings:
    catalogue, fleet = fleet_config(cfg)
    devices: tuple[tuple[str, DeviceProfile], ...] = ()
    if fleet is not None:
        labels = {u: federation.client(i).device for i, u in enumerate(federation.clients)}
        assigned = assign_devices(federation.clients, fleet, catalogue, cfg.seed, labels)
        devices = tuple(sorted(assigned.items()))
    return ClientSettings(
        federation=federation.spec,
        model=cfg.model.name,
        seed=cfg.seed,
        devices=devices,
        variability=fleet.sensor_variability if fleet else SensorVariability.none(),
        quant=QuantSettings(**_plain(cfg.quant)),
        crash_partitions=tuple(cfg.faults.crash_partitions),
    )


def build_strategy(cfg: DictConfig, num_clients: int, run: RunInfo) -> Strategy:
    """Instantiate the configured Flower strategy and check it can run on this fleet."""
    target = hydra.utils.get_class(cfg.strategy.algorithm._target_)
    takes_run = "run" in inspect.signature(target.__init__).parameters
    # _partial_: Hydra would turn a dataclass argument (RunInfo) into a config copy.
    build = instantiate(cfg.strategy.algorithm, _partial_=True)
    strategy = build(run=run) if takes_run else build()
    if not isinstance(strategy, Strategy):
        raise ConfigError(
            f"strategy.algorithm built {type(strategy).__name__}, not a Flower Message-API "
            "Strategy; point _target_ at a class from flwr.serverapp.strategy or strategies/"
        )
    for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes"):
        needed = getattr(strategy, name, 0)
        if needed > num_clients:
            raise ConfigError(
                f"strategy.algorithm.{name}={needed} but the federation has only {num_clients} "
                f"client users; lower {name} or use more users"
            )
    return strategy


def wait_for_fleet(grid: Grid, num_nodes: int, timeout_s: float) -> None:
    """Block until every simulated node has registered, so round 1 samples the whole fleet.

    Flower samples from the nodes registered so far; without this wait, round 1 would depend
    on how fast the runtime starts its nodes.
    """
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(list(grid.get_node_ids()))} of {num_nodes} nodes registered within "
                f"{timeout_s:.0f} s; raise runtime.round_timeout_s or check the Ray resources"
            )
        time.sleep(0.05)


def wrap_strategy(cfg: DictConfig, strategy: Strategy, run: RunInfo) -> Strategy:
    """Apply the configured wrappers, listed inner to outer, then the fleet simulation."""
    for spec in (cfg.get("wrappers") or {}).values():
        strategy = instantiate(spec.server, _partial_=True)(strategy=strategy, run=run)
    catalogue, fleet = fleet_config(cfg)
    expected_keys = {
        partition: DeviceIdentity.from_seed(cfg.seed, partition).signing_public_bytes()
        for partition in range(len(load_federation(federation_spec(cfg)).clients))
    }
    return FleetSimulation(
        strategy,
        run,
        expected_keys,
        catalogue,
        deadline_s=fleet.deadline_s if fleet else None,
        enroll_timeout_s=cfg.runtime.round_timeout_s,
    )


def client_mods(cfg: DictConfig) -> list[Mod]:
    """Client mods, outermost first: the outermost server wrapper pairs with the first mod."""
    wrapper_mods = [
        instantiate(spec.client_mod)
        for spec in (cfg.get("wrappers") or {}).values()
        if spec.get("client_mod") is not None
    ]
    strategy_mods = [instantiate(mod) for mod in cfg.strategy.get("client_mods") or []]
    return [*reversed(wrapper_mods), *strategy_mods]


def server_evaluator(cfg: DictConfig, federation: Federation) -> ServerEvaluate:
    """Evaluate the global model on the held-out users (none held out: no server metrics)."""
    holdout = federation.holdout
    model = build_model(
        cfg.model.name, federation.in_channels, federation.num_classes, cfg.model.width
    )

    def evaluate_holdout(_: int, arrays: ArrayRecord) -> dict[str, float]:
        if len(holdout) == 0:
            return {}
        model.load_state_dict(arrays_to_state(arrays))
        result = evaluate(model, holdout.x, holdout.y, federation.num_classes)
        return {"loss": result.loss, "accuracy": result.accuracy, "macro_f1": result.macro_f1}

    return evaluate_holdout


def _sinks(cfg: DictConfig, run_dir: Path, rounds_done: int) -> list[RoundSink]:
    sinks: list[RoundSink] = [RunFiles(run_dir, plots=cfg.tracking.plots)]
    if cfg.tracking.wandb:
        config = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(config, dict)
        sinks.append(WandbTracking(run_dir, cfg.tracking.project, config, cfg.tracking.wandb_mode))
    if cfg.tracking.progress:
        sinks.append(RoundProgress(cfg.num_rounds, rounds_done))
    return sinks


def _quiet_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("flwr").setLevel(level)
    logging.getLogger("ray").setLevel(level)


def _start_state(cfg: DictConfig, run_dir: Path, federation: Federation) -> tuple[int, Any]:
    """(rounds already done, initial arrays): from the checkpoint if resuming, else fresh."""
    if not cfg.resume:
        for name in (CHECKPOINT_NAME, "metrics.jsonl", "per_user.csv"):
            (run_dir / name).unlink(missing_ok=True)
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None:
        truncate_outputs(run_dir, checkpoint.server_round)
        return checkpoint.server_round, checkpoint
    seed_everything(cfg.seed)
    model = build_model(
        cfg.model.name, federation.in_channels, federation.num_classes, cfg.model.width
    )
    truncate_outputs(run_dir, 0)
    return 0, state_to_arrays(model.state_dict())


def run_experiment(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Run (or resume) one federated experiment in ``run_dir``; return its summary.

    ``overrides`` (the command line's) are recorded in the summary to label sweep jobs.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    _quiet_logs(cfg.runtime.verbose)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    federation = load_federation(federation_spec(cfg))
    settings = client_settings(cfg, federation)
    num_clients = len(federation.clients)
    run = RunInfo(run_id=run_dir.name, seed=cfg.seed, run_dir=run_dir, directory=FleetDirectory())
    strategy = build_strategy(cfg, num_clients, run)
    rounds_done, start = _start_state(cfg, run_dir, federation)
    if rounds_done:
        restore_state(strategy, start.strategy_state)
        initial_arrays = numpy_to_arrays(start.arrays)
        log.warning("resuming %s after round %d", run_dir, rounds_done)
    else:
        initial_arrays = start
    sinks = _sinks(cfg, run_dir, rounds_done)
    tracked = Tracking(wrap_strategy(cfg, strategy, run), server_evaluator(cfg, federation), sinks)
    wrapped = Checkpointing(tracked, run_dir, seed=cfg.seed, rounds_done=rounds_done)
    train_config = ConfigRecord(
        {
            "epochs": cfg.train.epochs,
            "batch-size": cfg.train.batch_size,
            "lr": cfg.train.lr,
            "width": float(cfg.model.width),
        }
    )
    evaluate_config = ConfigRecord({"width": float(cfg.model.width)})
    server_errors: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            wait_for_fleet(grid, num_clients, cfg.runtime.round_timeout_s)
            wrapped.start(
                grid=grid,
                initial_arrays=initial_arrays,
                num_rounds=cfg.num_rounds - rounds_done,
                timeout=cfg.runtime.round_timeout_s,
                train_config=train_config,
                evaluate_config=evaluate_config,
            )
        except BaseException as error:  # re-raised in the caller's thread below
            server_errors.append(error)
            raise

    try:
        if rounds_done < cfg.num_rounds:
            run_simulation(
                server_app=server_app,
                client_app=make_client_app(lambda _: settings, client_mods(cfg)),
                num_supernodes=num_clients,
                backend_name="ray",
                backend_config=_backend_config(cfg),
                verbose_logging=cfg.runtime.verbose,
            )
    finally:
        for sink in sinks:
            sink.close()
    if server_errors:
        raise server_errors[0]
    summary = {"overrides": " ".join(overrides or []), **summarize_run(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _backend_config(cfg: DictConfig) -> dict[str, Any]:
    resources = OmegaConf.to_container(cfg.runtime.client_resources, resolve=True)
    init_args = OmegaConf.to_container(cfg.runtime.ray_init_args, resolve=True)
    return {"client_resources": resources, "init_args": init_args}


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Console entry point (``fedhar``)."""
    torch.set_num_threads(1)
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    summary = run_experiment(cfg, run_dir, overrides=list(hydra_config.overrides.task))
    print_summary(summary, run_dir)
    return summary


if __name__ == "__main__":
    main()
