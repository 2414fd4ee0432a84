"""Device catalogue, fleet specs and device assignment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedhar.device.profiles import (
    FleetSpec,
    assign_devices,
    client_seed,
    load_catalogue,
    training_budget_bytes,
)
from fedhar.device.sensors import SensorVariability

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
CATALOGUE_YAML = CONFIGS / "fleet" / "devices" / "catalogue.yaml"
FLEETS = ("all_phone", "mcu_heavy", "mixed", "dataset_devices")
KIB, MIB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(CATALOGUE_YAML)


# name -> (usable SRAM, total SRAM, PSRAM, flash, clock) from the vendors' datasheets
DATASHEET = {
    "nrf52840": (256 * KIB, 256 * KIB, 0, MIB, 64e6),
    "stm32f446": (128 * KIB, 128 * KIB, 0, 512 * KIB, 180e6),
    "stm32f746": (320 * KIB, 320 * KIB, 0, MIB, 216e6),
    "stm32h743": (512 * KIB, MIB, 0, 2 * MIB, 480e6),  # training uses the contiguous AXI bank
    "esp32": (320 * KIB, 520 * KIB, 0, 4 * MIB, 240e6),  # about 320 KiB of the 520 usable
    "esp32s3": (512 * KIB, 512 * KIB, 8 * MIB, 8 * MIB, 240e6),  # with the optional PSRAM
    "apollo4_plus": (int(2.75 * MIB), int(2.75 * MIB), 0, 2 * MIB, 192e6),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_catalogue_has_the_datasheet_numbers(catalogue, name):
    profile = catalogue[name]
    sram, total, psram, flash, clock = DATASHEET[name]
    assert (profile.sram_bytes, profile.flash_bytes, profile.clock_hz) == (sram, flash, clock)
    assert (profile.sram_total_bytes or profile.sram_bytes, profile.psram_bytes) == (total, psram)
    # the planner budgets the usable contiguous SRAM only, never the rest or the PSRAM
    assert training_budget_bytes(profile) == sram - profile.runtime_reserve_bytes
    assert profile.kind == "mcu" and profile.weight_bits == 8


def test_catalogue_budgets_and_sensors(catalogue):
    assert training_budget_bytes(catalogue["android_phone"]) == 256 * MIB
    assert training_budget_bytes(catalogue["wearos_watch"]) == 128 * MIB
    assert training_budget_bytes(catalogue["esp32"]) == 280 * KIB  # Wi-Fi and LwIP take 40
    nrf = catalogue["nrf52840"]
    assert nrf.sensor.accel_range_g == 4.0 and nrf.sensor.adc_bits == 16
    assert {p.kind for p in catalogue.values()} == {"mcu", "watch", "phone"}
    assert set(DATASHEET) == {name for name, p in catalogue.items() if p.kind == "mcu"}


def test_optional_memory_fields_are_checked():
    entry = yaml.safe_load(CATALOGUE_YAML.read_text())["nrf52840"]
    assert load_catalogue({"x": entry})["x"].sram_total_bytes is None
    with pytest.raises(ValueError, match="sram_total_bytes 1024 is below the usable"):
        load_catalogue({"x": {**entry, "sram_total_bytes": 1024}})
    with pytest.raises(ValueError, match="psram_bytes -1 must be >= 0"):
        load_catalogue({"x": {**entry, "psram_bytes": -1}})


def test_sensor_accel_range_must_be_a_full_scale_setting():
    entry = yaml.safe_load(CATALOGUE_YAML.read_text())["nrf52840"]
    for g in (2, 16):
        assert load_catalogue({"x": {**entry, "sensor": {**entry["sensor"], "accel_range_g": g}}})
    with pytest.raises(ValueError, match=r"accel_range_g 6.0 .*\(2.0, 4.0, 8.0, 16.0\)"):
        load_catalogue({"x": {**entry, "sensor": {**entry["sensor"], "accel_range_g": 6.0}}})


def test_catalogue_rejects_unknown_and_missing_fields():
    entry = yaml.safe_load(CATALOGUE_YAML.read_text())["nrf52840"]
    with pytest.raises(ValueError, match=r"unknown fields \['sram_kb'\]"):
        load_catalogue({"x": {**entry, "sram_kb": 1}})
    without_clock = {k: v for k, v in entry.items() if k != "clock_hz"}
    with pytest.raises(ValueError, match=r"missing fields \['clock_hz'\]"):
        load_catalogue({"x": without_clock})
    with pytest.raises(ValueError, match="sensor"):
        load_catalogue({"x": {**entry, "sensor": {**entry["sensor"], "range": 2}}})
    with pytest.raises(ValueError, match="kind"):
        load_catalogue({"x": {**entry, "kind": "fridge"}})


def test_fleet_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match=r"sum to 0\.9"):
        FleetSpec(mix={"nrf52840": 0.5, "esp32": 0.4})


def test_unknown_device_lists_valid_names(catalogue):
    fleet = FleetSpec(mix={"nrf52840": 0.5, "pixel": 0.5})
    with pytest.raises(ValueError, match=r"\['pixel'\].*valid names.*nrf52840"):
        assign_devices(["u1"], fleet, catalogue, seed=0)


def test_assignment_is_deterministic_and_follows_fractions(catalogue):
    users = [f"u{i:02d}" for i in range(23)]
    fleet = FleetSpec(mix={"nrf52840": 0.5, "esp32": 0.3, "android_phone": 0.2})
    first = assign_devices(users, fleet, catalogue, seed=7)
    again = assign_devices(list(reversed(users)), fleet, catalogue, seed=7)
    assert {u: p.name for u, p in first.items()} == {u: p.name for u, p in again.items()}
    # 11.5 / 6.9 / 4.6 -> floors 11 / 6 / 4; the two leftovers go to the largest remainders
    # (0.9 for esp32, 0.6 for the phone), not to the largest fraction
    assert Counter(p.name for p in first.values()) == {
        "nrf52840": 11,
        "esp32": 7,
        "android_phone": 5,
    }
    other = assign_devices(users, fleet, catalogue, seed=8)
    assert [p.name for p in other.values()] != [first[u].name for u in other]


def test_fixed_assignment_from_dataset_devices(catalogue):
    fleet = FleetSpec(device_map={"smartphone": "android_phone", "smartwatch": "wearos_watch"})
    devices = {"s01_sp": "smartphone", "s01_sw": "smartwatch"}
    assigned = assign_devices(list(devices), fleet, catalogue, seed=0, dataset_devices=devices)
    assert assigned["s01_sp"].kind == "phone" and assigned["s01_sw"].kind == "watch"
    with pytest.raises(ValueError, match="dataset devices without a profile"):
        assign_devices(["a"], fleet, catalogue, seed=0, dataset_devices={"a": "tablet"})
    with pytest.raises(ValueError, match="pass dataset_devices"):
        assign_devices(["a"], fleet, catalogue, seed=0)


def test_client_seed_is_stable_and_distinct():
    assert client_seed("s01", 3) == client_seed("s01", 3)
    assert len({client_seed(u, 3) for u in ("s01", "s02", "s03")}) == 3
    assert client_seed("s01", 3) != client_seed("s01", 4)


@pytest.mark.parametrize("name", FLEETS)
def test_hydra_composes_fleet_config(name, tmp_path, catalogue):
    search_path = f"hydra:\n  searchpath:\n    - file://{CONFIGS}\n"
    (tmp_path / "main.yaml").write_text(f"defaults:\n  - fleet: {name}\n  - _self_\n{search_path}")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose(config_name="main")
    values = OmegaConf.to_container(cfg.fleet, resolve=True)
    assert load_catalogue(values["devices"]) == catalogue
    fleet = FleetSpec.from_mapping(values)
    assert isinstance(fleet.sensor_variability, SensorVariability)
    users = [f"s{i:02d}" for i in range(20)]
    labels = {u: ("smartphone" if i % 2 else "smartwatch") for i, u in enumerate(users)}
    assigned = assign_devices(users, fleet, catalogue, seed=1, dataset_devices=labels)
    assert set(assigned) == set(users)
