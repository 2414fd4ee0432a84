"""The Flower App behind `flwr run .`: config from the run config, whole rounds in-process."""

from __future__ import annotations

import gc
from pathlib import Path

from flwr.app import Context, RecordDict

from experiments import flower_app
from experiments.sinks import read_metrics
from fedhar.federation import Federation


def _live_federations() -> int:
    gc.collect()
    return sum(type(o) is Federation for o in gc.get_objects())


def test_worker_settings_do_not_keep_every_users_windows() -> None:
    overrides = ("experiment=quickstart", "dataset.options.num_users=4", "seed=12345")
    before = _live_federations()
    settings = flower_app._settings(overrides)
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
