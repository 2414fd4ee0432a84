"""The Flower App behind `flwr run .`: config from the run config, whole rounds in-process."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import torch
from flwr.app import Context, RecordDict

from experiments import flower_app
from experiments.sinks import read_metrics
from fedhar.federation import Federation


def _live_federations() -> int:
    gc.collect()
    return sum(type(o) is Federation for o in gc.get_objects())


def test_worker_settings_do_not_keep_every_users_windows(tmp_path: Path) -> None:
    overrides = ("experiment=quickstart", "dataset.options.num_users=4", "seed=12345")
    before = _live_federations()
    settings = flower_app._settings(overrides, str(tmp_path))
    assert settings.federation.options  # the spec, from which each node loads its own user
    assert _live_federations() == before


def test_run_config_selects_the_experiment_and_overrides(tmp_path: Path, in_process_grid) -> None:
    run_config = {
        "experiment": "quickstart",
        "overrides": "num_rounds=2 dataset.options.num_users=5 dataset.options.seconds_per_user=60"
        " fleet=all_phone wrappers=[compression] tracking.progress=false tracking.plots=false",
        "run-dir": str(tmp_path / "run"),
    }
    grid = in_process_grid(flower_app.client_app, num_nodes=4, run_config=run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    flower_app.main(grid, context)
    rows = read_metrics(tmp_path / "run")
    assert [r["server_round"] for r in rows] == [1, 2]
    assert rows[-1]["extra"]["compression/bytes-up"] == rows[-1]["bytes_up"] > 0
    assert (tmp_path / "run" / "summary.json").exists()


def test_flower_style_keys_set_their_hydra_keys_and_empty_ones_keep_the_preset() -> None:
    run_config = {"experiment": "quickstart", "num-server-rounds": 3, "local-epochs": "",
                  "learning-rate": 0.01, "overrides": "train.lr=0.02 fleet=none"}  # fmt: skip
    overrides = flower_app._overrides(run_config)
    assert overrides == ("experiment=quickstart", "num_rounds=3", "train.lr=0.01",
                         "train.lr=0.02", "fleet=none")  # fmt: skip
    cfg = flower_app._config(overrides)
    assert cfg.num_rounds == 3 and cfg.train.lr == 0.02 and cfg.train.epochs == 2
    assert set(flower_app.FLOWER_KEYS) <= set(_pyproject_run_config())


def _pyproject_run_config() -> dict:
    pyproject = Path(flower_app.__file__).resolve().parents[1] / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]


def test_each_flower_run_gets_its_own_directory_unless_one_is_named() -> None:
    def context(run_id: int, run_dir: str) -> Context:
        return Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                       run_config={"run-dir": run_dir})  # fmt: skip

    assert flower_app._run_dir(context(7, "")) == "outputs/flwr-run-7"
    assert flower_app._run_dir(context(8, "")) != flower_app._run_dir(context(7, ""))
    assert flower_app._run_dir(context(8, "runs/mine")) == "runs/mine"


def test_flower_workers_train_with_the_fedhar_runtimes_torch_threads(tmp_path: Path) -> None:
    """Thread count changes float sums; `flwr run` and `fedhar` must give the same numbers."""
    threads = torch.get_num_threads()
    try:
        for cpus in (1, 2):
            torch.set_num_threads(3)
            overrides = f"experiment=quickstart runtime.client_resources.num_cpus={cpus}"
            run_config = {"overrides": overrides, "run-dir": str(tmp_path)}
            context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                              run_config=run_config)  # fmt: skip
            flower_app._node_settings(context)
            assert torch.get_num_threads() == cpus
    finally:
        torch.set_num_threads(threads)


def _ray_variable_after_loading_the_app(env: dict[str, str]) -> str:
    probe = (
        "import os, experiments.flower_app; print(os.environ['RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_app_sets_rays_future_default() -> None:
    """Flower's simulation process loads the ClientApp before ray.init: the variable must be
    set by then, or Ray warns at every `flwr run`; a user's own value is kept."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"}
    assert _ray_variable_after_loading_the_app(env) == "0"
    assert (
        _ray_variable_after_loading_the_app(env | {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"})
        == "1"
    )
