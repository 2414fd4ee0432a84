"""The deployment report on a tiny finished run: per device class, what it shows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.studies import deployment
from tests.helpers.app_runs import run_in_process
from tests.helpers.grids import InProcessGrid

DEVICES = ["nrf52840", "android_phone"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("deploy") / "run"
    run_in_process(run_dir, InProcessGrid, "num_rounds=2 dataset.options.num_users=6 "
                   "federation.holdout_fraction=0.34", num_nodes=4)  # fmt: skip
    return run_dir


def test_report_shows_each_device_class_streaming_offload_and_consensus(
    finished_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = deployment.report(finished_run, out, DEVICES, seed=0)
    rows = {r["device"]: r for r in result["devices"]}
    assert sorted(rows) == sorted(DEVICES)
    for name, row in rows.items():
        assert row["stream_max_logit_gap"] == 0.0  # streaming equals batch, exactly
        assert row["macs_streaming"] < row["macs_batch"]
        assert row["fits_ram"] and row["fits_flash"]
        curve = [p for p in result["offload"] if p["device"] == name]
        assert curve[0]["threshold"] == 0.0 and curve[0]["offload_rate"] == 0.0
        assert curve[-1]["threshold"] == 1.0 and curve[-1]["offload_rate"] == 1.0
        assert curve[0]["macro_f1"] == pytest.approx(row["int8_macro_f1"])
        assert curve[-1]["macro_f1"] == pytest.approx(row["cloud_macro_f1"])  # all in the cloud
        assert row["cloud_macro_f1"] == row["float_macro_f1"]  # the cloud runs the float model
        ks = [r["segments"] for r in result["consensus"] if r["device"] == name]
        assert ks == [*deployment.SEGMENTS, "dense"]
    slow, fast = rows["nrf52840"], rows["android_phone"]
    assert slow["latency_ms"] > 10 * fast["latency_ms"]
    assert slow["frames_reused"] and slow["latency_ms"] == slow["latency_ms_streaming"]
    assert slow["windows"] == fast["windows"]  # the same users' streams on every device
    assert result["flash_bytes"] < deployment.ANCHOR_FLASH_BYTES
    for name in ("devices.csv", "offload.csv", "consensus.csv", "summary.md",
                 "model_int8_nrf52840.npz",
                 "offload.png", "reliability.png", "consensus.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["hop"] == result["hop"]
    assert len(_rows(out / "offload.csv")) == len(DEVICES) * len(deployment.THRESHOLDS)
    again = deployment.report(finished_run, tmp_path / "again", DEVICES, seed=0)
    assert again["devices"] == result["devices"]  # reproducible
    cloud = deployment.report(finished_run, tmp_path / "cloud", DEVICES, 0, cloud_run=finished_run)
    assert cloud["cloud_model"] == result["model"] and cloud["offload"] == result["offload"]


def test_a_cloud_model_from_another_federation_is_refused(
    finished_run: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    run_in_process(other, InProcessGrid, "num_rounds=1 seed=1 dataset.options.num_users=6 "
                   "federation.holdout_fraction=0.34", num_nodes=4)  # fmt: skip
    with pytest.raises(SystemExit, match="another federation"):
        deployment.report(finished_run, tmp_path / "r", DEVICES, seed=0, cloud_run=other)
    with pytest.raises(SystemExit, match="unknown device"):
        deployment.report(finished_run, tmp_path / "r", ["nrf5"], seed=0)
