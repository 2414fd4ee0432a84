"""The fleet study end to end on a tiny synthetic federation: two arms, two rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments.compose import client_settings, federation_spec, load_config
from experiments.studies.fleet_study import ARMS, SWITCHES, Arm, main
from fedhar.device.local_update import record_with_device
from fedhar.device.sensors import SensorVariability
from fedhar.federation import load_federation

pytestmark = pytest.mark.e2e

TINY = [
    "dataset.options.num_users=6",  # 5 clients + 1 held-out user
    "dataset.options.seconds_per_user=60",
    "tracking.plots=false",
    "runtime.round_timeout_s=120",
]
PHONE, MCU_CLEAN = "all_phone-var", "mcu_heavy-clean"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("fleet_study")
    sets = [arg for override in TINY for arg in ("--set", override)]
    argv = ["--rounds", "2", "--epochs", "1", "--out", str(out), "--arms", PHONE, MCU_CLEAN]
    results = main([*argv, *sets])
    return out, {r["arm"]: r for r in results}


def test_arms_cover_both_fleets_with_and_without_variability() -> None:
    assert {(a.fleet, a.variability) for a in ARMS} == {
        ("all_phone", True),
        ("all_phone", False),
        ("mcu_heavy", True),
        ("mcu_heavy", False),
    }
    clean = load_config(Arm("mcu_heavy", False).overrides()).fleet.sensor_variability
    noisy = load_config(Arm("mcu_heavy", True).overrides()).fleet.sensor_variability
    assert SWITCHES and not any(clean[s] for s in SWITCHES)
    assert all(noisy[s] for s in SWITCHES)


def test_study_writes_table_json_and_plot(study: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, results = study
    assert set(results) == {PHONE, MCU_CLEAN}
    assert (out / "fleet_study.png").stat().st_size > 0
    saved = json.loads((out / "fleet_study.json").read_text())
    assert [r["arm"] for r in saved["results"]] == [PHONE, MCU_CLEAN]
    table = (out / "fleet_study.md").read_text()
    for r in results.values():
        assert r["rounds"] == 2 and r["curve"]["round"] == [1, 2]
        assert r["sim_total_s"] == pytest.approx(sum(r["curve"]["sim_wall_clock_s"]))
        assert f"| {r['arm']} | {r['heldout_macro_f1']:.3f} |" in table
    # The plans come from the SRAM planner: the 128 KiB STM32F446 cannot train the whole model,
    # the phone trains all of it at the configured batch.
    plans = {
        cells[2]: cells[5]
        for row in table.splitlines()
        if len(cells := [c.strip() for c in row.split("|")]) > 6
        and cells[1] in {"all_phone", "mcu_heavy"}
    }
    assert not plans["stm32f446"].startswith("full")
    assert plans["android_phone"] == "full b32"


def test_mcu_fleet_rounds_take_longer_than_phone_rounds(
    study: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    _, results = study
    phone, mcu = results[PHONE], results[MCU_CLEAN]
    assert phone["sim_round_s"] > 0
    assert mcu["sim_round_s"] / phone["sim_round_s"] > 10  # simulated seconds, same invocation


def test_clean_arm_clients_record_without_variability(
    study: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    out, _ = study
    for arm, expected in ((MCU_CLEAN, SensorVariability.none()), (PHONE, SensorVariability())):
        cfg = OmegaConf.load(out / arm / "config.yaml")  # what the run actually used
        federation = load_federation(federation_spec(cfg))  # type: ignore[arg-type]
        settings = client_settings(cfg, federation)  # type: ignore[arg-type]
        assert settings.variability == expected
        client = federation.client(0)
        device = settings.device_of(client.user)
        assert device is not None
        recorded = record_with_device(client.train, device, settings.variability, 1, 2)
        assert np.array_equal(recorded.x, client.train.x) == (arm == MCU_CLEAN)
