"""Strategies, wrappers and fleets compose: whole runs in-process through the Flower App."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.app_runs import run_in_process


def _run(tmp_path: Path, grid_type, overrides: str) -> list[dict]:
    return run_in_process(tmp_path, grid_type, f"num_rounds=2 {overrides}")


@pytest.mark.parametrize(
    "overrides",
    [
        "strategy=heterofl fleet=mcu_heavy quant.enabled=false wrappers=[compression,encryption]",
        "strategy=fedrolex fleet=mixed wrappers=[compression]",
        "strategy=fedper fleet=all_phone wrappers=[encryption]",
        "strategy=fedbn fleet=none wrappers=[compression]",
        "strategy=fedadam fleet=mixed wrappers=[compression,encryption]",
        "strategy=heterofl fleet=mcu_heavy quant.enabled=false"
        " wrappers=[secagg,compression,encryption]",
        "strategy=fedper fleet=all_phone wrappers=[secagg]",
        "strategy=fedadam fleet=mixed wrappers=[secagg,encryption]"
        " wrappers.encryption.server.downlink=true",
        "strategy=fjord fleet=mixed wrappers=[compression]"
        " +wrappers.compression.server.downlink_bits_by_kind={mcu:8}",
    ],
)
def test_every_update_is_accepted_and_aggregated(tmp_path: Path, in_process_grid, overrides: str):
    rows = _run(tmp_path, in_process_grid, overrides)
    assert [r["server_round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["num_failures"] == 0, row["failures"]
        rejected = {k: v for k, v in row["extra"].items() if "/rejected" in k and v}
        assert not rejected, rejected
        assert row["succeeded"] >= 1
        assert row["per_user_summary"]["num_users"] == 4


def test_mcus_download_int8_while_phones_get_float32(tmp_path: Path, in_process_grid) -> None:
    both = "fleet=mixed strategy=fedavg wrappers=[compression]"
    plain = _run(tmp_path / "fp32", in_process_grid, both)
    mcu = _run(tmp_path / "mcu", in_process_grid,
               f"{both} +wrappers.compression.server.downlink_bits_by_kind={{mcu:8}}")  # fmt: skip
    for p, m in zip(plain, mcu, strict=True):
        assert m["extra"]["compression/bytes-down"] > 0
        assert p["extra"]["compression/bytes-down"] == 0
        assert m["bytes_down"] < p["bytes_down"]  # the MCUs' train messages shrank
        assert m["num_failures"] == 0 and m["succeeded"] == p["succeeded"]
