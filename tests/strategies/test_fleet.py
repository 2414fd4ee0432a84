"""Fleet simulation on the server, driven through real client handlers without Ray."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from clients.app import ClientSettings, make_client_app
from fedhar.device.profiles import load_catalogue
from fedhar.federation import FederationSpec, load_federation
from fedhar.models import build_model
from fedhar.records import RoundRecord
from fedhar.transport.keys import DeviceIdentity
from fedhar.transport.keystore import RunKeys
from fedhar.wire import arrays_to_numpy, state_to_arrays
from strategies.enrollment import enroll
from strategies.fleet import FleetSimulation
from strategies.run_info import RunInfo
from strategies.tracking import Tracking
from tests.conftest import CATALOGUE_YAML

CATALOGUE = load_catalogue(CATALOGUE_YAML)
SPEC = FederationSpec(
    "synthetic",
    FederationSpec.options_from({"num_users": 4, "seconds_per_user": 40.0, "seed": 3}),
    holdout_fraction=0.0,
)
TRAIN = ConfigRecord({"epochs": 1, "batch-size": 16, "lr": 0.05})


def _settings(device: str, **changes: object) -> ClientSettings:
    users = load_federation(SPEC).clients
    profile = replace(CATALOGUE[device], **changes)
    return ClientSettings(
        SPEC,
        "microbi_convlstm",
        seed=7,
        devices=tuple((u, profile) for u in users),
        keys=RunKeys(Path("unused"), seed=7),
    )


def _stack(settings: ClientSettings, grid_type, deadline_s: float | None = None, traces=None):
    records: list[RoundRecord] = []

    class Sink:
        on_round = records.append

        def close(self) -> None: ...

    run = RunInfo("test", settings.seed, Path("."))
    catalogue = {profile.name: profile for _, profile in settings.devices}
    fleet = FleetSimulation(
        FedAvg(), run, catalogue, deadline_s=deadline_s, availability_traces=traces
    )
    grid = grid_type(make_client_app(lambda _: settings), num_nodes=4)
    enroll(grid, run, timeout_s=10.0)
    return Tracking(fleet, sinks=[Sink()]), grid, run, records


def _initial() -> ArrayRecord:
    torch.manual_seed(0)
    federation = load_federation(SPEC)
    return state_to_arrays(
        build_model("microbi_convlstm", federation.in_channels, federation.num_classes).state_dict()
    )


def test_enrollment_fills_the_directory_with_each_devices_capability(in_process_grid) -> None:
    strategy, grid, run, records = _stack(_settings("android_phone"), in_process_grid)
    strategy.start(grid, _initial(), num_rounds=1, train_config=TRAIN)
    assert sorted(info.partition_id for info in run.directory.nodes.values()) == [0, 1, 2, 3]
    assert {info.max_width for info in run.directory.nodes.values()} == {1.0}
    assert records[0].succeeded == 4
    assert records[0].extra["fleet/sim_wall_clock_s"] > 0
    assert records[0].extra["fleet/sim_energy_j"] > 0


def test_enrollment_registers_each_devices_own_public_keys(in_process_grid) -> None:
    _, _, run, _ = _stack(_settings("android_phone"), in_process_grid)
    for node, info in run.directory.nodes.items():
        identity = DeviceIdentity.from_seed(7, info.partition_id)
        assert run.keys.signing_key(node) == identity.signing_public_bytes()
        assert run.keys.exchange_key(node) == identity.public_bytes()


def test_device_that_fits_nothing_declines_with_the_sram_it_needs(in_process_grid) -> None:
    settings = _settings(
        "stm32f446", sram_bytes=40_000, runtime_reserve_bytes=24_576, availability=1.0
    )
    strategy, grid, run, records = _stack(settings, in_process_grid)
    result = strategy.start(grid, _initial(), num_rounds=1, train_config=TRAIN)
    assert records[0].succeeded == 0 and len(records[0].declines) == 4
    assert all(r.startswith("no-plan:") and "bytes of SRAM" in r for r in records[0].declines)
    # FedAvg asks for the full width; a narrower sub-model would still fit this device
    (width,) = {info.max_width for info in run.directory.nodes.values()}
    assert 0.0 < width < 1.0
    assert not result.train_metrics_clientapp  # nothing was aggregated


def test_late_replies_are_dropped_as_stragglers_and_keep_the_model(in_process_grid) -> None:
    strategy, grid, _, records = _stack(_settings("nrf52840"), in_process_grid, deadline_s=1e-3)
    initial = _initial()
    strategy.start(grid, initial, num_rounds=1, train_config=TRAIN)
    record = records[0]
    stragglers = record.extra.get("fleet/rejected/straggler", 0.0)
    assert stragglers + record.extra["fleet/dropouts"] == 4 and stragglers > 0
    assert record.succeeded == 0
    assert all(f.reason.startswith("fleet rejected straggler: ") for f in record.failures)
    assert record.extra["fleet/sim_wall_clock_s"] == pytest.approx(1e-3)


def test_unavailable_devices_are_not_asked_to_train(in_process_grid) -> None:
    strategy, grid, _, records = _stack(
        _settings("android_phone", availability=0.0), in_process_grid
    )
    initial = _initial()
    result = strategy.start(grid, initial, num_rounds=1, train_config=TRAIN)
    assert records[0].extra["fleet/dropouts"] == 4 and records[0].sampled == 0
    before, after = arrays_to_numpy(initial), arrays_to_numpy(result.arrays or initial)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_an_availability_trace_decides_who_trains_each_round(in_process_grid) -> None:
    traces = {"android_phone": [1, 0, 0]}  # round r reads trace[(r - 1) % 3]
    strategy, grid, _, records = _stack(_settings("android_phone"), in_process_grid, traces=traces)
    strategy.start(grid, _initial(), num_rounds=3, train_config=TRAIN)
    assert [r.extra["fleet/dropouts"] for r in records] == [0.0, 4.0, 4.0]
