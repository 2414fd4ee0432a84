"""Device catalogue, fleet specs and device assignment."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedhar.device.local_update import QuantSettings, max_width
from fedhar.device.profiles import (
    FleetSpec,
    assign_devices,
    client_seed,
    load_catalogue,
    training_budget_bytes,
)
from fedhar.device.sensors import SensorVariability
from fedhar.models import ModelShape

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
CATALOGUE_YAML = CONFIGS / "fleet" / "devices" / "catalogue.yaml"
FLEETS = ("all_phone", "mcu_heavy", "mixed", "dataset_devices")
KIB, MIB = 1024, 1024 * 1024


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(CATALOGUE_YAML)


def _entries_with_sources() -> dict[str, str]:
    """Each catalogue entry's raw YAML text, comments included."""
    text = CATALOGUE_YAML.read_text()
    blocks: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            blocks[line.split(":")[0]] = []
        elif blocks:
            blocks[list(blocks)[-1]].append(line)
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def test_every_device_names_the_source_of_its_figures(catalogue):
    entries = _entries_with_sources()
    assert set(entries) == set(catalogue)
    for name, text in entries.items():
        assert "# source:" in text, f"{name} has no '# source:' line"


@pytest.mark.parametrize("name", ["nrf52840", "stm32h743", "esp32", "esp32s3", "apollo4_plus"])
def test_the_budget_is_one_block_of_usable_sram_never_psram_or_other_banks(catalogue, name):
    profile = catalogue[name]
    budget = training_budget_bytes(profile)
    assert budget <= profile.sram_bytes - profile.runtime_reserve_bytes
    assert budget <= (profile.largest_block_bytes or profile.sram_bytes)
    assert budget < (profile.sram_total_bytes or profile.sram_bytes) + profile.psram_bytes


def test_a_fragmented_heap_budgets_its_largest_block(catalogue):
    esp32 = catalogue["esp32"]
    assert esp32.largest_block_bytes is not None
    free_heap = esp32.sram_bytes - esp32.runtime_reserve_bytes
    assert esp32.largest_block_bytes < free_heap
    assert training_budget_bytes(esp32) == 112 * KIB
    whole = dataclasses.replace(esp32, largest_block_bytes=None)
    assert training_budget_bytes(whole) == free_heap
    model = ModelShape("dscnn", 6, 7, 128)
    settings = QuantSettings()
    # a plan that needs more than the block but less than the free heap is declined
    assert max_width(esp32, model, settings) < max_width(whole, model, settings)
    with pytest.raises(ValueError, match="largest_block_bytes"):
        dataclasses.replace(esp32, largest_block_bytes=esp32.sram_bytes + 1)


def test_catalogue_budgets_and_sensors(catalogue):
    assert training_budget_bytes(catalogue["android_phone"]) == 256 * MIB
    assert training_budget_bytes(catalogue["wearos_watch"]) == 128 * MIB
    nrf = catalogue["nrf52840"]
    assert nrf.sensor.accel_range_g == 4.0 and nrf.sensor.adc_bits == 16
    assert {p.kind for p in catalogue.values()} == {"mcu", "watch", "phone"}


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
