"""Kill and resume: a run interrupted inside a round and resumed ends with the same numbers
as an uninterrupted one, for every stateful strategy and wrapper.

The interruption is a crash at the end of round 3, after its metrics were written and its
clients saved their state but before its checkpoint: the worst moment, since the run
directory then holds a round the checkpoint does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from experiments import flower_app, server
from experiments.sinks import PER_USER_FILE, read_metrics
from fedhar.checkpoint import load_checkpoint
from fedhar.records import RoundRecord

BASE = (
    "dataset.options.num_users=5 dataset.options.seconds_per_user=60 tracking.progress=false"
    " tracking.plots=false fleet=all_phone"
)
CASES = {
    "fedavg": "strategy=fedavg",
    "fedper": "strategy=fedper",
    "fedrep": "strategy=fedrep",
    "fedbn": "strategy=fedbn",
    "fedadam": "strategy=fedadam",  # server optimizer state in the checkpoint
    "heterofl": "strategy=heterofl fleet=mcu_heavy model=dscnn",
    "compression-ef": "wrappers=[compression] wrappers.compression.client_mod.error_feedback=true",
    "encryption": "strategy=fedper wrappers=[encryption] wrappers.encryption.server.downlink=true",
    "heterofl-encryption": "strategy=heterofl fleet=mcu_heavy model=dscnn wrappers=[encryption]",
}


class Killed(Exception):
    """The server died: nothing after this point of the round happened."""


class DiesInRound:
    """A sink that kills the run once ``server_round``'s record is written."""

    def __init__(self, server_round: int) -> None:
        self.server_round = server_round

    def on_round(self, record: RoundRecord) -> None:
        if record.server_round == self.server_round:
            raise Killed(f"killed in round {record.server_round}")

    def close(self) -> None:
        """Nothing to flush."""


def _run(run_dir: Path, grid_type, overrides: str, rounds: int) -> None:
    run_config = {"overrides": f"{BASE} {overrides} num_rounds={rounds}", "run-dir": str(run_dir)}
    grid = grid_type(flower_app.client_app, num_nodes=4, run_config=run_config)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    flower_app.main(grid, context)


def _numbers(run_dir: Path) -> tuple[list[tuple], str]:
    """Every round's scores and counts, and the per-user table."""
    timeless = ("compute-seconds",)  # wall time: differs between any two runs
    rounds = [
        (r["server_round"], {k: v for k, v in r["train"].items() if k not in timeless},
         r["federated"], r["server"], r["per_user_summary"],
         r["succeeded"], r["num_failures"])
        for r in read_metrics(run_dir)
    ]  # fmt: skip
    return rounds, (run_dir / PER_USER_FILE).read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(CASES))
def test_a_run_killed_inside_a_round_resumes_to_the_same_numbers(
    tmp_path: Path, in_process_grid, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    overrides = CASES[case]
    _run(tmp_path / "full", in_process_grid, overrides, 4)
    uninterrupted = _numbers(tmp_path / "full")
    assert [r[0] for r in uninterrupted[0]] == [1, 2, 3, 4]

    resumed = tmp_path / "resumed"
    plain_sinks = server._sinks
    monkeypatch.setattr(server, "_sinks", lambda *a: [*plain_sinks(*a), DiesInRound(3)])
    with pytest.raises(Killed):
        _run(resumed, in_process_grid, overrides, 4)
    monkeypatch.setattr(server, "_sinks", plain_sinks)
    killed = load_checkpoint(resumed)
    assert killed is not None and killed.server_round == 2
    assert len(read_metrics(resumed)) == 3  # round 3 is on disk, not in the checkpoint
    keys = {p.name: p.read_bytes() for p in (resumed / "keys").glob("*.key")}

    _run(resumed, in_process_grid, overrides, 4)
    assert _numbers(resumed) == uninterrupted
    finished = load_checkpoint(resumed)
    assert finished is not None and finished.run_id == killed.run_id  # one run, one id
    assert (
        len(finished.run_id) == 32 and finished.run_id != load_checkpoint(tmp_path / "full").run_id
    )  # type: ignore[union-attr]
    assert {p.name: p.read_bytes() for p in (resumed / "keys").glob("*.key")} == keys
    assert len(keys) == 5  # the server's and each of the 4 enrolled devices'
    if case == "encryption":  # the resumed start's new transport id: every honest reply verifies
        for record in read_metrics(resumed)[2:]:
            extra = record["extra"]
            assert record["succeeded"] > 0 and extra["encryption/accepted"] == record["succeeded"]
            assert not any(key.startswith("encryption/screened") for key in extra), extra


@pytest.mark.e2e
def test_signed_batchnorm_sums_all_reach_the_server(tmp_path: Path, in_process_grid) -> None:
    _run(tmp_path, in_process_grid, CASES["heterofl-encryption"], 2)
    for record in read_metrics(tmp_path):
        extra = record["extra"]
        assert extra["partial/bn-stats/answers"] == record["succeeded"] > 0
        assert not any(key.startswith("encryption/screened") for key in extra), extra
