"""A resumed run resumes its clients' state too (personal layers, error-feedback residuals)."""

from __future__ import annotations

import shutil
from pathlib import Path

from flwr.app import Context, RecordDict

from clients.state_store import STATE_DIR
from experiments import flower_app
from experiments.sinks import read_metrics

STATEFUL = (
    "dataset.options.num_users=5 dataset.options.seconds_per_user=60 tracking.progress=false"
    " tracking.plots=false strategy=fedper fleet=all_phone wrappers=[compression]"
    " wrappers.compression.client_mod.error_feedback=true"
)


def _run(run_dir: Path, grid_type, rounds: int) -> list[dict]:
    """A run to ``rounds`` on a freshly started fleet (node contexts start empty)."""
    run_config = {"overrides": f"{STATEFUL} num_rounds={rounds}", "run-dir": str(run_dir)}
    grid = grid_type(flower_app.client_app, num_nodes=4, run_config=run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    flower_app.main(grid, context)
    return [
        (r["server_round"], r["train"]["train-loss"], r["per_user_summary"])
        for r in read_metrics(run_dir)
    ]


def test_resumed_stateful_clients_end_like_an_uninterrupted_run(tmp_path, in_process_grid):
    uninterrupted = _run(tmp_path / "full", in_process_grid, 3)
    _run(tmp_path / "resumed", in_process_grid, 2)
    assert any((tmp_path / "resumed" / STATE_DIR).rglob("round00002.bin"))
    assert _run(tmp_path / "resumed", in_process_grid, 3) == uninterrupted

    _run(tmp_path / "amnesic", in_process_grid, 2)
    shutil.rmtree(tmp_path / "amnesic" / STATE_DIR)  # what a resume without the store would do
    assert _run(tmp_path / "amnesic", in_process_grid, 3) != uninterrupted
