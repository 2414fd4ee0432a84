"""ClientApp handlers: local training within a device plan, QAT, evaluation, crashes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from clients.app import ClientSettings, make_client_app
from fedhar.device.profiles import load_catalogue
from fedhar.federation import FederationSpec, load_client, load_federation
from fedhar.models import build_model
from fedhar.train import evaluate
from fedhar.transport.keystore import RunKeys
from fedhar.wire import (
    METRICS_KEY,
    arrays_to_numpy,
    eval_report_from_record,
    metric_value,
    node_info_from_record,
    state_to_arrays,
    trained_names,
)
from tests.conftest import CATALOGUE_YAML

CATALOGUE = load_catalogue(CATALOGUE_YAML)
SPEC = FederationSpec(
    "synthetic",
    FederationSpec.options_from({"num_users": 2, "seconds_per_user": 40.0, "seed": 5}),
    holdout_fraction=0.0,
)


def _settings(device: str | None, **changes: object) -> ClientSettings:
    users = load_federation(SPEC).clients
    devices = () if device is None else tuple((u, CATALOGUE[device]) for u in users)
    return replace(ClientSettings(SPEC, "microbi_convlstm", seed=1, devices=devices), **changes)


def _global() -> ArrayRecord:
    torch.manual_seed(0)
    federation = load_federation(SPEC)
    model = build_model("microbi_convlstm", federation.in_channels, federation.num_classes)
    return state_to_arrays(model.state_dict())


def _ask(settings: ClientSettings, grid_type, kind: str = MessageType.TRAIN) -> Message:
    config = ConfigRecord({"server-round": 1, "epochs": 1, "batch-size": 16, "lr": 0.05})
    grid = grid_type(make_client_app(lambda _: settings), num_nodes=2)
    message = Message(RecordDict({"arrays": _global(), "config": config}), 101, kind)
    return grid.send_and_receive([message])[0]


def test_same_message_same_update(in_process_grid) -> None:
    first, second = (_ask(_settings(None), in_process_grid) for _ in range(2))
    a, b = arrays_to_numpy(first.content["arrays"]), arrays_to_numpy(second.content["arrays"])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert trained_names(first.content) == list(a)


def test_mcu_trains_int8_qat_within_its_plan(in_process_grid) -> None:
    reply = _ask(_settings("stm32f446"), in_process_grid)
    state = arrays_to_numpy(reply.content["arrays"])
    assert state.keys() == arrays_to_numpy(_global()).keys()  # QAT keeps the float model's keys
    trained = set(trained_names(reply.content) or [])
    params = {
        k for k in state if not k.endswith(("running_mean", "running_var", "batches_tracked"))
    }
    assert trained < set(state) and not params <= trained  # only bias-only fits 104 KiB
    assert metric_value(reply.content, "sim-compute-s") > 0
    assert np.isfinite(metric_value(reply.content, "train-loss"))
    before = arrays_to_numpy(_global())
    frozen = params - trained
    assert all(np.array_equal(before[k], state[k]) for k in frozen)


def test_evaluation_reports_the_users_own_test_split(in_process_grid) -> None:
    reply = _ask(_settings(None), in_process_grid, MessageType.EVALUATE)
    report = eval_report_from_record(reply.content[METRICS_KEY])
    test = load_client(SPEC, 0).test  # node 101 is partition 0: that user's later windows
    federation = load_federation(SPEC)
    model = build_model("microbi_convlstm", federation.in_channels, federation.num_classes)
    model.load_state_dict(_global().to_torch_state_dict())
    expected = evaluate(model, test.x, test.y, federation.num_classes)
    assert report.num_examples == len(test) > 0
    assert report.eval_accuracy == pytest.approx(expected.accuracy)
    assert report.eval_macro_f1 == pytest.approx(expected.macro_f1)


def test_configured_crash_becomes_an_error_reply(in_process_grid) -> None:
    reply = _ask(_settings(None, crash_partitions=(0,)), in_process_grid)
    assert reply.has_error() and "simulated crash of node 0" in reply.error.reason


def test_enrollment_reports_the_windows_the_user_holds(in_process_grid, tmp_path) -> None:
    settings = _settings("nrf52840", keys=RunKeys(tmp_path))
    grid = in_process_grid(make_client_app(lambda _: settings), num_nodes=2)
    query = ConfigRecord({"server-round": 0, "run-id": "r", "enroll-challenge": bytes(32)})
    messages = [Message(RecordDict({"config": query}), n, MessageType.QUERY) for n in (101, 102)]
    for partition, reply in enumerate(grid.send_and_receive(messages)):
        info, _, _ = node_info_from_record(reply.content)
        data = load_client(SPEC, partition)
        assert info.partition_id == partition and info.user == data.user
        assert info.num_windows == len(load_federation(SPEC).source.windows_of(data.user))
        assert info.num_windows >= len(data.train) + len(data.test)  # the split drops overlaps


def test_a_configured_attacker_sends_its_update_flipped_and_boosted(in_process_grid) -> None:
    honest = _ask(_settings(None), in_process_grid).content["arrays"]
    attack = _ask(_settings(None, poison_partitions=(0,), poison_scale=-4.0), in_process_grid)
    sent = arrays_to_numpy(_global())
    assert not np.allclose(honest["head.weight"].numpy(), sent["head.weight"])  # it trained
    for name, value in arrays_to_numpy(attack.content["arrays"]).items():
        trained = honest[name].numpy()
        expected = (
            sent[name] - 4.0 * (trained - sent[name]) if trained.dtype.kind == "f" else trained
        )
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=name)
    assert metric_value(attack.content, "num-examples") > 0  # the rest of the reply is honest
