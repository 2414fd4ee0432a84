"""Serve a prepared run on the fast runtime: Ray, a pool of ClientWorker actors, a RayGrid."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import ray
from flwr.clientapp.typing import Mod
from omegaconf import OmegaConf

from experiments.runtime.grid import RayGrid
from experiments.runtime.worker import CONCURRENCY_GROUPS, ClientWorker
from experiments.server import ServerRun

log = logging.getLogger("fedhar")


def use_rays_future_accelerator_default() -> None:
    """Opt into Ray's future default (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``) unless the user
    chose; without it ``ray.init`` warns at every start."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def start_ray(runtime: Any) -> bool:
    """Connect to ``runtime.ray_address`` or start a local Ray; True if this call started it."""
    if ray.is_initialized():
        return False
    use_rays_future_accelerator_default()
    init_args = OmegaConf.to_container(runtime.ray_init_args, resolve=True)
    assert isinstance(init_args, dict)
    address = runtime.get("ray_address")
    if address:  # an existing cluster brings its own resources
        keep = ("log_to_driver", "logging_level")
        ray.init(address=str(address), **{k: v for k, v in init_args.items() if k in keep})
    else:
        ray.init(**{str(k): v for k, v in init_args.items()})
    return True


def serve_on_ray(run: ServerRun, mods: Sequence[Mod]) -> None:
    """Run ``run``'s remaining rounds on a pool of workers sized to the cluster's CPUs."""
    runtime = run.cfg.runtime
    started = start_ray(runtime)
    cpus = float(runtime.client_resources.num_cpus)
    if cpus <= 0:
        raise ValueError(f"runtime.client_resources.num_cpus must be > 0, got {cpus}")
    workers = max(1, int(ray.cluster_resources().get("CPU", 1.0) // cpus))
    remote = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)  # type: ignore[call-overload]
    actor = remote(ClientWorker).options(
        num_cpus=cpus,
        num_gpus=float(runtime.client_resources.num_gpus),
        scheduling_strategy="SPREAD",  # on a cluster: workers on every node, not the first only
    )
    threads = max(1, int(cpus))

    def new_worker() -> Any:
        return actor.remote(run.settings, mods, threads)

    alive = [n for n in ray.nodes() if n.get("Alive")]
    log.info("fast runtime: %d workers of %s CPU on %d Ray node(s) with %g CPUs", workers, cpus,
             len(alive), sum(n["Resources"].get("CPU", 0.0) for n in alive))  # fmt: skip
    grid: RayGrid | None = None
    try:
        grid = RayGrid(new_worker, workers, run.num_clients,
                       messages_per_call=int(runtime.messages_per_call))  # fmt: skip
        run.serve(grid, runtime_stats=grid.round_stats)
    finally:
        if grid is not None:
            grid.shutdown()
        if started:
            ray.shutdown()
