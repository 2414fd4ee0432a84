"""Whole runs through the Flower App in this process, on an in-process grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict

from experiments import flower_app
from experiments.sinks import read_metrics

TINY = (
    "dataset.options.num_users=5 dataset.options.seconds_per_user=60"
    " tracking.progress=false tracking.plots=false"
)


def run_in_process(run_dir: Path, grid_type: Any, overrides: str, num_nodes: int = 4
                   ) -> list[dict]:  # fmt: skip
    """Run the ServerApp with ``overrides`` on a tiny synthetic federation; its round records."""
    run_config = {"experiment": "", "overrides": f"{TINY} {overrides}", "run-dir": str(run_dir)}
    grid = grid_type(flower_app.client_app, num_nodes=num_nodes, run_config=run_config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    flower_app.main(grid, context)
    return read_metrics(run_dir)
