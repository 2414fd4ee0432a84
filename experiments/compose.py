"""Building a run's pieces from a Hydra config: the one place that calls ``instantiate``.

Library code takes typed dataclasses; this module turns the composed config into them, into
the server's strategy stack (`build_stack`) and into the client mods named in the config.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from flwr.app import ArrayRecord
from flwr.clientapp.typing import Mod
from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clients.app import ClientSettings
from clients.state_store import persisted_state_mod
from experiments.privacy import dp_sgd_settings, privacy_mods, wrap_privacy
from experiments.run_dirs import register_resolver
from fedhar.device.local_update import QuantSettings, max_width, storage_bits
from fedhar.device.planner import smallest_budget
from fedhar.device.profiles import (
    DeviceProfile,
    FleetSpec,
    assign_devices,
    load_catalogue,
    training_budget_bytes,
)
from fedhar.device.sensors import SensorVariability
from fedhar.federation import Federation, FederationSpec
from fedhar.models import ModelShape, build_model
from fedhar.partial.evaluate import evaluate_widths
from fedhar.partial.widths import WIDTH_LEVELS
from fedhar.records import RoundSink
from fedhar.train import evaluate
from fedhar.transport.keystore import KEYS_DIR, ClientKeys, RunKeys
from fedhar.wire import arrays_to_state
from strategies.checkpointing import Checkpointing
from strategies.deadline import RoundClock
from strategies.fleet import FleetSimulation
from strategies.run_info import RunInfo
from strategies.sanitize import SanitizedUpdates
from strategies.tracking import ServerEvaluate, Tracking

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
register_resolver()  # ${config_hash:} in the run directory's name


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
        split=str(cfg.federation.get("split", "chronological")),
        seed=cfg.seed,
    )


def fleet_config(cfg: DictConfig) -> tuple[dict[str, DeviceProfile], FleetSpec | None]:
    """The device catalogue and fleet spec, or ({}, None) for a run without devices."""
    fleet = cfg.get("fleet")
    if not fleet or (not fleet.get("mix") and not fleet.get("device_map")):
        return {}, None
    catalogue = load_catalogue(_plain(fleet.devices))
    return catalogue, FleetSpec.from_mapping(_plain(fleet))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True)


def run_keys(cfg: DictConfig, run_dir: Path) -> RunKeys:
    """The run's keys: OS-random, kept in ``run_dir/keys/``; seed-derived only when
    ``transport.seeded_keys`` asks for it (insecure)."""
    seeded = bool(cfg.transport.seeded_keys)
    return RunKeys(Path(run_dir) / KEYS_DIR, seed=cfg.seed if seeded else None)


def client_settings(
    cfg: DictConfig, federation: Federation, run_dir: Path | None = None
) -> ClientSettings:
    """What every client needs; without ``run_dir`` the clients hold no keys and cannot
    enroll (studies that call the client functions directly)."""
    catalogue, fleet = fleet_config(cfg)
    devices: tuple[tuple[str, DeviceProfile], ...] = ()
    if fleet is not None:
        labels = {user: federation.device_of(user) for user in federation.clients}
        assigned = assign_devices(federation.clients, fleet, catalogue, cfg.seed, labels)
        devices = tuple(sorted(assigned.items()))
        check_model_fits(cfg, federation, set(assigned.values()))
    return ClientSettings(
        federation=federation.spec,
        model=cfg.model.name,
        seed=cfg.seed,
        devices=devices,
        variability=fleet.sensor_variability if fleet else SensorVariability.none(),
        quant=QuantSettings(**_plain(cfg.quant)),
        crash_partitions=tuple(cfg.faults.crash_partitions),
        hang_partitions=tuple(cfg.faults.hang_partitions),
        hang_seconds=float(cfg.faults.hang_seconds),
        poison_partitions=tuple(cfg.faults.poison_partitions),
        poison_scale=float(cfg.faults.poison_scale),
        dp_sgd=dp_sgd_settings(cfg, model_shape(cfg, federation)),
        keys=None if run_dir is None else run_keys(cfg, run_dir),
    )


def model_shape(cfg: DictConfig, federation: Federation) -> ModelShape:
    return ModelShape(
        cfg.model.name, federation.in_channels, federation.num_classes, federation.window_length
    )


def check_model_fits(cfg: DictConfig, federation: Federation, profiles: set[DeviceProfile]) -> None:
    """Refuse a model that no device of the fleet can train, naming the SRAM it needs."""
    quant = QuantSettings(**_plain(cfg.quant))
    shape = model_shape(cfg, federation)
    if any(max_width(profile, shape, quant) > 0 for profile in profiles):
        return
    needed = min(smallest_budget(shape, bits=storage_bits(profile, quant)) for profile in profiles)
    largest = max(training_budget_bytes(profile) for profile in profiles)
    raise ConfigError(
        f"model {cfg.model.name} fits no device of the fleet: training it needs at least "
        f"{needed} bytes of SRAM, the largest budget is {largest} bytes; choose a smaller "
        "model or width, or a fleet with more SRAM"
    )


def build_strategy(cfg: DictConfig, num_clients: int, run: RunInfo) -> Strategy:
    """Instantiate the configured Flower strategy and check it can run on this fleet."""
    strategy = instantiate_with_run(cfg.strategy.algorithm, run)
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


def instantiate_with(node: DictConfig, name: str, value: Any, **kwargs: Any) -> Any:
    """Instantiate ``node`` with ``kwargs``, and ``name=value`` only if its target takes it.

    ``_partial_``: Hydra would turn a dataclass argument (RunInfo) into a config copy.
    """
    target = hydra.utils.get_object(node._target_)
    if name not in inspect.signature(target).parameters:
        return instantiate(node, **kwargs)
    return instantiate(node, _partial_=True)(**kwargs, **{name: value})


def instantiate_with_run(node: DictConfig, run: RunInfo, **kwargs: Any) -> Any:
    """Instantiate ``node`` with ``kwargs``, and ``run=`` only if its target takes it."""
    return instantiate_with(node, "run", run, **kwargs)


def build_wrapper(name: str, spec: DictConfig, strategy: Strategy, run: RunInfo) -> Strategy:
    """One configured wrapper around ``strategy``; ``run=`` only for classes that take it."""
    wrapped = instantiate_with_run(spec.server, run, strategy=strategy)
    if not isinstance(wrapped, Strategy):
        raise ConfigError(
            f"wrappers.{name}.server built {type(wrapped).__name__}, not a Flower Strategy; "
            "point _target_ at a strategy wrapper class"
        )
    return wrapped


def check_wrapper_order(names: list[str], classes: list[type]) -> None:
    """Refuse a wrapper list (inner to outer) that cannot work, naming the order that does.

    Each wrapper sees replies as the wrappers outside it left them, so a wrapper must sit
    outside every wrapper of a lower ``stack_rank`` (classes without one, such as Flower's DP
    wrappers, act on plain updates: rank 0).
    """
    ranks = [getattr(cls, "stack_rank", 0) for cls in classes]
    for inner in range(len(names)):
        for outer in range(inner + 1, len(names)):
            if ranks[inner] > ranks[outer]:
                right = [name for _, name in sorted(zip(ranks, names, strict=True),
                                                    key=lambda pair: pair[0])]  # fmt: skip
                raise ConfigError(
                    f"wrappers=[{','.join(names)}] cannot work: {names[inner]} must wrap "
                    f"{names[outer]}, not sit inside it (wrappers are listed inner to outer); "
                    f"use wrappers=[{','.join(right)}]"
                )


def wrap_strategy(cfg: DictConfig, strategy: Strategy, run: RunInfo) -> Strategy:
    """Apply the configured wrappers, listed inner to outer, then the fleet simulation."""
    specs = dict((cfg.get("wrappers") or {}).items())
    names = [str(name) for name in specs]
    check_wrapper_order(names, [hydra.utils.get_class(s.server._target_) for s in specs.values()])
    for name, spec in specs.items():
        strategy = build_wrapper(str(name), spec, strategy, run)
    catalogue, fleet = fleet_config(cfg)
    if fleet is None:
        return strategy
    return FleetSimulation(
        strategy,
        run,
        catalogue,
        deadline_s=fleet.deadline_s,
        availability_traces=fleet.availability_traces,
    )


def build_stack(
    cfg: DictConfig,
    federation: Federation,
    run: RunInfo,
    sinks: Sequence[RoundSink],
    rounds_done: int = 0,
) -> Strategy:
    """The server's whole strategy stack, inner to outer.

    The configured algorithm behind update sanitation (`strategies.sanitize`), its
    differential privacy (`experiments.privacy`), the configured wrappers (order-checked), the
    fleet simulation, tracking (round records to ``sinks``, server-side evaluation) and
    checkpointing.
    """
    strategy = build_strategy(cfg, len(federation.clients), run)
    sanitized = SanitizedUpdates(strategy, run.directory, **_plain(cfg.sanitize))
    private = wrap_privacy(cfg, sanitized, run, len(federation.clients))
    wrapped = wrap_strategy(cfg, private, run)
    statistics = getattr(strategy, "width_statistics", None)  # static BatchNorm, per width
    tracked = Tracking(
        wrapped,
        server_evaluator(cfg, federation, statistics),
        sinks,
        max_failed_rounds=int(cfg.runtime.max_failed_rounds),
        min_updates=getattr(strategy, "min_train_nodes", 1),
        directory=run.directory,
        clock=RoundClock(float(cfg.runtime.round_timeout_s), float(cfg.runtime.evaluate_share)),
    )
    return Checkpointing(tracked, run.run_dir, cfg.seed, rounds_done, run.directory, run.run_id)


def client_mods(cfg: DictConfig, run_dir: Path, server_fingerprint: str) -> list[Mod]:
    """Client mods, outermost first: the outermost server wrapper pairs with the first mod.

    Outside them all, the node's state is kept in ``run_dir`` so that resumed runs resume it;
    inside them, the privacy mechanism's mod (clipping, local noise) sees the plain update.
    Mods that take ``keys=`` get the devices' keys and ``server_fingerprint`` to pin.
    """
    keys = ClientKeys(run_keys(cfg, run_dir), server_fingerprint)
    wrapper_mods = [
        instantiate_with(spec.client_mod, "keys", keys)
        for spec in (cfg.get("wrappers") or {}).values()
        if spec.get("client_mod") is not None
    ]
    strategy_mods = [instantiate(mod) for mod in cfg.strategy.get("client_mods") or []]
    return [
        persisted_state_mod(str(run_dir)),
        *reversed(wrapper_mods),
        *privacy_mods(cfg),
        *strategy_mods,
    ]


def server_evaluator(
    cfg: DictConfig,
    federation: Federation,
    width_statistics: Mapping[float, Mapping[str, torch.Tensor]] | None = None,
) -> ServerEvaluate:
    """Evaluate the global model on the held-out users (none held out: no server metrics).

    With ``strategy.evaluate_widths`` (partial-model strategies: ``true`` for the width grid,
    or a list of widths), every nested width is scored as well, as ``width_<w>/macro_f1`` and
    friends, with the BatchNorm statistics of ``width_statistics`` where the strategy keeps
    them (static BatchNorm; the mapping is read at each evaluation).
    """
    holdout = federation.holdout
    model = build_model(
        cfg.model.name, federation.in_channels, federation.num_classes, cfg.model.width
    )
    chosen = cfg.strategy.get("evaluate_widths")
    widths = list(WIDTH_LEVELS) if chosen is True else list(chosen or [])

    def evaluate_holdout(_: int, arrays: ArrayRecord) -> dict[str, float]:
        if len(holdout) == 0:
            return {}
        state = arrays_to_state(arrays)
        model.load_state_dict(state)
        result = evaluate(model, holdout.x, holdout.y, federation.num_classes)
        scores = {"loss": result.loss, "accuracy": result.accuracy, "macro_f1": result.macro_f1}
        if widths:
            scores |= evaluate_widths(
                cfg.model.name, state, widths, holdout.x, holdout.y, federation.num_classes,
                width_statistics,
            )  # fmt: skip
        return scores

    return evaluate_holdout
