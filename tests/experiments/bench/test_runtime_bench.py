"""The runtime benchmark's own pieces: the floor arm's rounds and how rounds are read back."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.bench.runtime import ArmResult, Workload, _round_ends, run_floor, table


def test_workload_samples_at_most_100_and_holds_out_25_users() -> None:
    small, large = Workload(10, 2), Workload(10000, 2)
    assert (small.users, small.per_round, small.fraction) == (35, 10, 1.0)
    assert (large.users, large.per_round, large.fraction) == (10025, 100, 0.01)
    assert large.spec().holdout_fraction == 25 / 10025


def test_the_floor_logs_every_round_and_rounds_are_read_back(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    run_floor(Workload(2, 2, seconds_per_user=16.0), events)
    rounds = [json.loads(line)["round"] for line in events.read_text().splitlines()]
    assert rounds == [0, 1, 2]
    ends = _round_ends(tmp_path)
    assert [r for r, _, _ in ends] == [1, 2] and all(d >= 0 for _, _, d in ends)


def test_the_table_has_one_row_per_result() -> None:
    result = ArmResult("floor", 10, 10, True, 5.0, 1.0, 0.5, 20.0, 0.4)
    rows = table([result], {"floor": 0.03}).splitlines()
    assert len(rows) == 3 and rows[2].startswith("| floor | 10 | 10 | 5.0 | 1.0 | 0.50 | 20.0 |")
