"""The Flower App behind ``flwr run .``: the same ServerApp and ClientApp as ``fedhar``.

The run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, or ``--run-config``) selects
the Hydra config: ``experiment`` names a preset in ``configs/experiment/``, Flower's usual keys
(`FLOWER_KEYS`: ``num-server-rounds``, ``local-epochs``, ...) set their Hydra keys when not
empty, ``overrides`` adds space-separated Hydra overrides (applied last), and ``run-dir`` is
where outputs go: empty, each ``flwr run`` gets its own ``outputs/flwr-run-<run id>``; name a
directory to resume a run there. ``server-fingerprint`` pins the server key that clients
accept; empty, they pin the fingerprint the server published in the run directory, which
only works where clients share the server's filesystem (simulation).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from clients.app import ClientSettings, make_client_app
from experiments.compose import (
    client_mods,
    client_settings,
    federation_spec,
    load_config,
    run_keys,
)
from experiments.report import print_summary
from experiments.runtime.launch import use_rays_future_accelerator_default
from experiments.server import prepare_run
from fedhar.federation import open_federation

# Flower's simulation process imports this module, to check that the ClientApp loads, before
# it starts Ray: Ray's future default set here keeps ray.init from warning under `flwr run`.
use_rays_future_accelerator_default()

RUN_DIR_PREFIX = "outputs/flwr-run-"  # + Flower's run id, when run-dir is empty
FLOWER_KEYS = {  # Flower-style run-config key -> Hydra key
    "num-server-rounds": "num_rounds",
    "local-epochs": "train.epochs",
    "batch-size": "train.batch_size",
    "learning-rate": "train.lr",
    "fraction-train": "strategy.algorithm.fraction_train",
    "fraction-evaluate": "strategy.algorithm.fraction_evaluate",
    "seed": "seed",
}


def _overrides(run_config: Mapping[str, object]) -> tuple[str, ...]:
    experiment = str(run_config.get("experiment", "") or "")
    flower = [
        f"{key}={run_config[name]}"
        for name, key in FLOWER_KEYS.items()
        if str(run_config.get(name, "")) != ""
    ]
    extra = str(run_config.get("overrides", "") or "").split()
    return (*([f"experiment={experiment}"] if experiment else []), *flower, *extra)


@lru_cache(maxsize=4)
def _config(overrides: tuple[str, ...]) -> DictConfig:
    return load_config(list(overrides))


@lru_cache(maxsize=4)
def _settings(overrides: tuple[str, ...], run_dir: str) -> ClientSettings:
    """A worker's client settings. The federation is opened only to list the users and their
    devices and is then let go: each node loads its own user's windows when first asked."""
    cfg = _config(overrides)
    return client_settings(cfg, open_federation(federation_spec(cfg)), Path(run_dir))


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = _config(_overrides(context.run_config))
    torch.set_num_threads(1)  # server-side evaluation, as under the fedhar command
    run = prepare_run(cfg, Path(_run_dir(context)))
    try:
        run.serve(grid)
    finally:
        run.close()
    print_summary(run.finish(list(_overrides(context.run_config))), run.run_dir)


def configured_mods(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply the client mods the run config's wrappers and strategy name, outermost first."""
    handler = call_next
    overrides, run_dir = _overrides(context.run_config), _run_dir(context)
    pinned = str(context.run_config.get("server-fingerprint", "") or "")
    fingerprint = pinned or _published(overrides, run_dir, context.run_id)
    for mod in reversed(_mods(overrides, run_dir, fingerprint)):
        handler = _bind(mod, handler)
    return handler(msg, context)


@lru_cache(maxsize=4)
def _published(overrides: tuple[str, ...], run_dir: str, run_id: int) -> str:
    """The fingerprint the server published in the (shared) run directory, read once per
    Flower run."""
    return run_keys(_config(overrides), Path(run_dir)).published_server_fingerprint()


@lru_cache(maxsize=4)
def _mods(overrides: tuple[str, ...], run_dir: str, fingerprint: str) -> tuple[Mod, ...]:
    return tuple(client_mods(_config(overrides), Path(run_dir), fingerprint))


def _run_dir(context: Context) -> str:
    """The run config's ``run-dir``; empty: a directory of this Flower run's own."""
    return str(context.run_config.get("run-dir", "") or f"{RUN_DIR_PREFIX}{context.run_id}")


def _bind(mod: Mod, call_next: ClientAppCallable) -> ClientAppCallable:
    return lambda msg, context: mod(msg, context, call_next)


def _node_settings(context: Context) -> ClientSettings:
    """The settings for a message; it is handled with as many torch threads as the fedhar
    runtime gives its workers, so that both runtimes give the same numbers."""
    overrides = _overrides(context.run_config)
    torch.set_num_threads(max(1, int(_config(overrides).runtime.client_resources.num_cpus)))
    return _settings(overrides, _run_dir(context))


client_app = make_client_app(_node_settings, [configured_mods])
