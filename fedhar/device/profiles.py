"""Device profiles, the catalogue that holds them, and fleets that assign them to users."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedhar.device.sensors import SensorVariability

DEVICE_KINDS = ("mcu", "watch", "phone")
RADIOS = ("ble", "wifi")
ACCEL_RANGES_G = (2.0, 4.0, 8.0, 16.0)  # full-scale settings MEMS accelerometers offer


@dataclass(frozen=True)
class SensorSpec:
    """The on-board IMU as configured: full-scale ranges, output resolution, nominal rate."""

    imu: str  # part name, for reports
    accel_range_g: float  # full scale is +-accel_range_g
    gyro_range_dps: float  # full scale is +-gyro_range_dps (degrees per second)
    adc_bits: int  # output resolution over the full-scale span
    rate_hz: float  # nominal output data rate

    def __post_init__(self) -> None:
        if self.accel_range_g not in ACCEL_RANGES_G:
            raise ValueError(
                f"sensor {self.imu!r}: accel_range_g {self.accel_range_g} is not a full-scale "
                f"setting; use one of {ACCEL_RANGES_G} (+-2/4/8/16 g)"
            )


@dataclass(frozen=True)
class DeviceProfile:
    """One hardware class: memory, compute, power, radio, availability, numerics and IMU."""

    name: str
    kind: str  # one of DEVICE_KINDS
    sram_bytes: int  # usable contiguous SRAM, the memory the planner budgets
    flash_bytes: int
    clock_hz: float
    macs_per_cycle: float  # sustained training-kernel MACs per clock cycle
    active_power_w: float  # draw while computing
    radio: str  # one of RADIOS
    radio_bandwidth_bps: float  # effective application throughput
    radio_power_w: float  # draw while transferring
    runtime_reserve_bytes: int  # SRAM taken by the runtime before training starts
    availability: float  # probability of being available in a round
    weight_bits: int
    activation_bits: int
    sensor: SensorSpec
    sram_total_bytes: int | None = None  # all on-chip SRAM, when more than sram_bytes is usable
    psram_bytes: int = 0  # external PSRAM; too slow for training buffers, so never budgeted
    # the largest contiguous heap block once the runtime is up, where the heap is split into
    # regions (ESP32); None: the usable SRAM is one block. A training arena is one block.
    largest_block_bytes: int | None = None
    core: str = ""  # the CPU core (e.g. cortex-m4f), whose published latencies set macs_per_cycle

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ValueError(
                f"device {self.name!r}: kind {self.kind!r} is not one of {DEVICE_KINDS}"
            )
        if self.radio not in RADIOS:
            raise ValueError(f"device {self.name!r}: radio {self.radio!r} is not one of {RADIOS}")
        if not 0.0 <= self.availability <= 1.0:
            raise ValueError(
                f"device {self.name!r}: availability {self.availability} not in [0, 1]"
            )
        if not 0 <= self.runtime_reserve_bytes < self.sram_bytes:
            raise ValueError(
                f"device {self.name!r}: runtime_reserve_bytes {self.runtime_reserve_bytes} must be "
                f"in [0, sram_bytes={self.sram_bytes})"
            )
        if self.sram_total_bytes is not None and self.sram_total_bytes < self.sram_bytes:
            raise ValueError(
                f"device {self.name!r}: sram_total_bytes {self.sram_total_bytes} is below the "
                f"usable sram_bytes {self.sram_bytes}; set it to all on-chip SRAM, or leave it out"
            )
        if self.largest_block_bytes is not None and not (
            0 < self.largest_block_bytes <= self.sram_bytes
        ):
            raise ValueError(
                f"device {self.name!r}: largest_block_bytes {self.largest_block_bytes} must be in "
                f"(0, sram_bytes={self.sram_bytes}]; leave it out when the SRAM is one block"
            )
        if self.psram_bytes < 0:
            raise ValueError(f"device {self.name!r}: psram_bytes {self.psram_bytes} must be >= 0")


def training_budget_bytes(profile: DeviceProfile) -> int:
    """SRAM left for training once the runtime has taken its reserve, in one contiguous block."""
    budget = profile.sram_bytes - profile.runtime_reserve_bytes
    if profile.largest_block_bytes is not None:
        budget = min(budget, profile.largest_block_bytes)
    return budget


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Construct dataclass `cls` from `values`, naming unknown or missing fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    unknown = sorted(set(values) - names)
    missing = sorted(required - set(values))
    if unknown or missing:
        raise ValueError(
            f"{where}: unknown fields {unknown}, missing fields {missing}; a {cls.__name__} "
            f"needs {sorted(required)} and may set {sorted(names - required)}"
        )
    return cls(**values)


def load_catalogue(source: Mapping[str, Any] | str | Path) -> dict[str, DeviceProfile]:
    """Device profiles keyed by name, from a mapping or a YAML file of `name: {fields}`.

    The `name` field may be omitted (the key is the name); if given it must equal the key.
    """
    if isinstance(source, str | Path):
        with open(source) as handle:
            source = yaml.safe_load(handle)
    if not isinstance(source, Mapping):
        raise ValueError(f"a device catalogue is a mapping of name -> profile, got {type(source)}")
    catalogue = {}
    for name, entry in source.items():
        values = dict(entry)
        if values.setdefault("name", name) != name:
            raise ValueError(f"catalogue key {name!r} holds a profile named {values['name']!r}")
        if "sensor" not in values:
            raise ValueError(f"device {name!r}: missing field 'sensor'")
        values["sensor"] = _build(SensorSpec, dict(values["sensor"]), f"device {name!r} sensor")
        catalogue[str(name)] = _build(DeviceProfile, values, f"device {name!r}")
    return catalogue


@dataclass(frozen=True)
class FleetSpec:
    """How devices are handed out: a mix of fractions, or a map from the dataset's own devices."""

    mix: Mapping[str, float] = field(default_factory=dict)  # profile name -> fraction of users
    device_map: Mapping[str, str] = field(default_factory=dict)  # dataset device -> profile name
    sensor_variability: SensorVariability = field(default_factory=SensorVariability)
    deadline_s: float | None = None  # round deadline; None waits for every participant
    # profile name -> 0/1 per round, cycled: a recorded availability trace that replaces the
    # profile's availability probability for devices of that type
    availability_traces: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.mix and not self.device_map:
            raise ValueError("a fleet needs a `mix` of device fractions or a `device_map`")
        total = sum(self.mix.values())
        if self.mix and abs(total - 1.0) > 1e-6:
            raise ValueError(f"fleet mix fractions sum to {total:.6g}, they must sum to 1")
        if any(f < 0 for f in self.mix.values()):
            raise ValueError(f"fleet mix fractions must be non-negative, got {dict(self.mix)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FleetSpec:
        """Build from a plain mapping (a resolved fleet config); the `devices` key is ignored."""
        values = {k: v for k, v in values.items() if k != "devices"}
        switches = dict(values.pop("sensor_variability", None) or {})
        values["sensor_variability"] = _build(
            SensorVariability, {**dataclasses.asdict(SensorVariability()), **switches}, "fleet"
        )
        values["mix"] = {str(k): float(v) for k, v in (values.get("mix") or {}).items()}
        values["device_map"] = {str(k): str(v) for k, v in (values.get("device_map") or {}).items()}
        values.setdefault("deadline_s", None)
        values["availability_traces"] = {
            str(k): tuple(int(bit) for bit in v)
            for k, v in (values.get("availability_traces") or {}).items()
        }
        return _build(cls, values, "fleet")


def _check_names(names: Sequence[str], catalogue: Mapping[str, DeviceProfile]) -> None:
    unknown = sorted(set(names) - set(catalogue))
    if unknown:
        raise ValueError(f"unknown device names {unknown}; valid names: {sorted(catalogue)}")


def _largest_remainder(mix: Mapping[str, float], n: int) -> dict[str, int]:
    """Integer counts summing to n, as close to fraction * n as rounding allows."""
    exact = {name: fraction * n for name, fraction in mix.items()}
    counts = {name: int(np.floor(value)) for name, value in exact.items()}
    by_remainder = sorted(mix, key=lambda name: (-(exact[name] - counts[name]), name))
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def assign_devices(
    users: Sequence[str],
    fleet: FleetSpec,
    catalogue: Mapping[str, DeviceProfile],
    seed: int,
    dataset_devices: Mapping[str, str] | None = None,
) -> dict[str, DeviceProfile]:
    """A device profile per user, deterministic in `seed` and independent of `users`' order.

    With a `mix`, counts follow the fractions by largest-remainder rounding and are shuffled
    over the sorted users. With a `device_map`, each user keeps the device the dataset recorded
    them on: `dataset_devices` maps user -> dataset device label.
    """
    if fleet.device_map:
        _check_names(list(fleet.device_map.values()), catalogue)
        if dataset_devices is None:
            raise ValueError("this fleet maps dataset devices to profiles; pass dataset_devices")
        labels = {dataset_devices[u] for u in users if u in dataset_devices}
        missing_users = [u for u in users if u not in dataset_devices]
        unmapped = sorted(labels - set(fleet.device_map))
        if missing_users or unmapped:
            raise ValueError(
                f"users without a dataset device {missing_users[:5]}, dataset devices without a "
                f"profile {unmapped}; device_map covers {sorted(fleet.device_map)} (a user "
                "recorded on several devices needs one device per client, e.g. sp-sw-har with "
                "dataset.options.devices=sp or sw)"
            )
        return {u: catalogue[fleet.device_map[dataset_devices[u]]] for u in users}
    _check_names(list(fleet.mix), catalogue)
    ordered = sorted(users)
    counts = _largest_remainder(fleet.mix, len(ordered))
    names = [name for name in sorted(counts) for _ in range(counts[name])]
    shuffled = np.random.default_rng(seed).permutation(len(names))
    return {user: catalogue[names[i]] for user, i in zip(ordered, shuffled, strict=True)}


def client_seed(user: str, seed: int) -> int:
    """A stable per-user seed (independent of Python's hash randomisation)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(user.encode())]).generate_state(1)[0])
