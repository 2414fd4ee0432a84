"""The Flower App behind `flwr run .`: config from the run config, whole rounds in-process."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, RecordDict

from experiments import flower_app
from experiments.sinks import read_metrics


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
