"""``fedhar``: a Hydra config in, a federated run on Ray out (the fast runtime or Flower's).

Every config group can be overridden on the command line, e.g.
``fedhar strategy=fedprox dataset=sp_sw_har num_rounds=20``; sweeps run with ``-m``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from flwr.app import Context
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from clients.app import make_client_app
from experiments.compose import CONFIG_DIR, ConfigError, client_mods
from experiments.privacy import PrivacyConfigError
from experiments.report import print_summary
from experiments.runtime.launch import serve_on_ray, use_rays_future_accelerator_default
from experiments.server import ServerRun, prepare_run
from fedhar.data.download import DownloadError
from strategies.tracking import NoProgress

BACKENDS = ("ray-fast", "flower")  # runtime.backend
USER_ERRORS = (ConfigError, PrivacyConfigError, DownloadError, NoProgress)  # one line, no traceback
DEBUG_FLAG, DEBUG_ENV = "--debug", "FEDHAR_DEBUG"  # show the traceback of a user error
HELP_FLAGS = ("--help", "-h")  # fedhar's short help; Hydra's own is --hydra-help
GROUPS = ("dataset", "model", "strategy", "fleet", "privacy", "wrappers", "experiment")


def run_experiment(
    cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Run (or resume) one federated experiment in ``run_dir``; return its summary.

    ``overrides`` (the command line's) are recorded in the summary to label sweep jobs.
    """
    backend = str(cfg.runtime.backend)
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown runtime.backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    try:
        run = prepare_run(cfg, run_dir)
    except (ValueError, FileNotFoundError) as error:  # the config, data or run dir cannot work
        if isinstance(error, USER_ERRORS):
            raise
        raise ConfigError(str(error)) from error
    try:
        if run.rounds_done < cfg.num_rounds:
            mods = client_mods(cfg, run_dir, run.server_fingerprint)
            if backend == "ray-fast":
                serve_on_ray(run, mods)
            else:
                serve_on_flower(run, mods)
    finally:
        run.close()
    return run.finish(overrides)


def serve_on_flower(run: ServerRun, mods: list[Mod]) -> None:
    """Run the remaining rounds under Flower's own ``run_simulation`` (Ray backend)."""
    server_errors: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run.serve(grid)
        except BaseException as error:  # re-raised in the caller's thread below
            server_errors.append(error)
            raise

    settings = run.settings
    run_simulation(
        server_app=server_app,
        client_app=make_client_app(lambda _: settings, mods),
        num_supernodes=run.num_clients,
        backend_name="ray",
        backend_config=_backend_config(run.cfg),
        verbose_logging=run.cfg.runtime.verbose,
    )
    if server_errors:
        raise server_errors[0]


def _backend_config(cfg: DictConfig) -> dict[str, Any]:
    resources = OmegaConf.to_container(cfg.runtime.client_resources, resolve=True)
    init_args = OmegaConf.to_container(cfg.runtime.ray_init_args, resolve=True)
    use_rays_future_accelerator_default()
    return {"client_resources": resources, "init_args": init_args}


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Console entry point (``fedhar``)."""
    torch.set_num_threads(1)
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    try:
        summary = run_experiment(cfg, run_dir, overrides=list(hydra_config.overrides.task))
    except USER_ERRORS as error:
        if cfg.runtime.verbose or os.environ.get(DEBUG_ENV):
            raise
        print(f"fedhar: error: {error}", file=sys.stderr)
        print(f"(run with {DEBUG_FLAG} or runtime.verbose=true for the traceback)", file=sys.stderr)
        raise SystemExit(2 if isinstance(error, ConfigError | PrivacyConfigError) else 1) from None
    print_summary(summary, _relative(run_dir))
    return summary


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (as users typed it)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def help_text() -> str:
    """The main keys of ``configs/config.yaml`` with their comments, and the groups' options."""
    lines = [
        "fedhar: a federated HAR run on Ray, configured by Hydra overrides.",
        "",
        "usage: fedhar [--debug] [group=option ...] [key=value ...]   (-m: a sweep, e.g. seed=0,1)",
        "",
        "config groups (group=option):",
    ]
    for group in GROUPS:
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        lines.append(f"  {group:<11} {', '.join(options)}")
    text = (CONFIG_DIR / "config.yaml").read_text()
    keys = text.split("\nhydra:", 1)[0].split("\nseed:", 1)[1]  # after the defaults list
    lines += ["", "main keys (configs/config.yaml; the device catalogue is configs/fleet/):",
              "seed:" + keys.rstrip(), "",
              "more: fedhar --cfg job [overrides] prints the composed config; fedhar --hydra-help;",
              "tab completion: eval \"$(fedhar -sc install=bash)\""]  # fmt: skip
    return "\n".join(lines) + "\n"


def cli() -> None:
    """``fedhar [--debug] [overrides]``: `main`; ``--debug`` shows user errors' tracebacks,
    ``--help`` the main keys and config groups."""
    if any(flag in sys.argv[1:] for flag in HELP_FLAGS):
        print(help_text(), end="")
        return
    if DEBUG_FLAG in sys.argv[1:]:
        sys.argv.remove(DEBUG_FLAG)
        os.environ[DEBUG_ENV] = "1"
    main()


if __name__ == "__main__":
    cli()
