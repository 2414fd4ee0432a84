"""The fedhar ClientApp: one simulated node is one user on one simulated device.

Handlers are thin: decode the message, call fedhar, encode the reply. A node's user comes
from its ``partition-id``; its data is loaded lazily, the first time the node is asked to
work in a given worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import nn

from fedhar.costs import simulate_client_cost
from fedhar.data.dataset import WindowDataset
from fedhar.devices import DeviceProfile, client_seed
from fedhar.federation import ClientData, FederationSpec, load_client
from fedhar.keys import DeviceIdentity
from fedhar.models import build_model, count_macs
from fedhar.ondevice import (
    ModelShape,
    QuantSettings,
    max_width,
    plan_on_device,
    quant_config,
    record_with_device,
)
from fedhar.planner import PlanDeclined, apply_plan, trainable_names
from fedhar.quant import calibrate, prepare_qat, scale_gradients
from fedhar.sensors import SensorVariability
from fedhar.train import TrainConfig, derive_seed, evaluate, train_head_first, train_local
from fedhar.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    ClientIdentity,
    EvalReport,
    NodeInfo,
    TrainReport,
    arrays_to_state,
    decline_reply,
    eval_instructions_from_config,
    eval_reply,
    instructions_from_config,
    node_info_record,
    train_reply,
)


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs that does not change from round to round."""

    federation: FederationSpec
    model: str
    seed: int = 0
    devices: tuple[tuple[str, DeviceProfile], ...] = ()  # user -> profile; empty: no fleet
    variability: SensorVariability = field(default_factory=SensorVariability.none)
    quant: QuantSettings = field(default_factory=QuantSettings)
    crash_partitions: tuple[int, ...] = ()  # simulated device crashes: these nodes always fail
    hang_partitions: tuple[int, ...] = ()  # simulated hung devices: train replies come late
    hang_seconds: float = 0.0  # how long a hung device stalls before it trains

    def device_of(self, user: str) -> DeviceProfile | None:
        return dict(self.devices).get(user)


SettingsProvider = Callable[[Context], ClientSettings]
CALIBRATION_WINDOWS = 64  # windows the QAT observers see before the first step


class SimulatedCrash(RuntimeError):
    """A configured device crash, used to study fault tolerance."""


@dataclass(frozen=True)
class _Node:
    partition_id: int
    data: ClientData
    device: DeviceProfile | None
    shape: ModelShape


@lru_cache(maxsize=16)  # bounded: a worker serves many nodes but keeps only a few users' data
def _node(settings: ClientSettings, partition_id: int) -> _Node:
    data = load_client(settings.federation, partition_id)
    device = settings.device_of(data.user)
    if device is not None:
        seed = client_seed(data.user, settings.seed)
        rate = data.train.sampling_rate_hz
        data = ClientData(
            user=data.user,
            device=device.name,
            train=_recorded(data.train, rate, device, settings.variability, seed, 0),
            test=_recorded(data.test, rate, device, settings.variability, seed, 1),
        )
    _, channels, length = data.train.x.shape
    shape = ModelShape(settings.model, channels, data.train.num_classes, length)
    return _Node(partition_id, data, device, shape)


def _recorded(
    windows: WindowDataset,
    rate: float,
    device: DeviceProfile,
    variability: SensorVariability,
    seed: int,
    part: int,
) -> WindowDataset:
    x = record_with_device(windows.x, rate, device, variability, seed, derive_seed(seed, part))
    return WindowDataset(
        x, windows.y, windows.user, windows.device, windows.start_time_s,
        windows.class_names, windows.channel_names, windows.sampling_rate_hz,
    )  # fmt: skip


def _node_for(settings: ClientSettings, context: Context) -> _Node:
    return _node(settings, int(context.node_config["partition-id"]))


def _model_at(node: _Node, width: float) -> nn.Module:
    return build_model(node.shape.name, node.shape.in_channels, node.shape.num_classes, width)


def train_user(settings: ClientSettings, node: _Node, msg: Message) -> RecordDict:
    """One local update of one user, within their device's SRAM plan."""
    instructions = instructions_from_config(msg.content.config_records[CONFIG_KEY])
    identity = ClientIdentity(user=node.data.user, device=node.data.device)
    model = _model_at(node, instructions.width)
    model.load_state_dict(arrays_to_state(msg.content.array_records[ARRAYS_KEY]))
    batch_size, lr, step_hook, trained = instructions.batch_size, instructions.lr, None, None
    compute_s = 0.0
    if node.device is not None:
        try:
            plan = plan_on_device(node.device, node.shape, instructions.width, settings.quant)
        except PlanDeclined as declined:
            return decline_reply(f"no-plan: {declined.reason}", identity)
        qat = quant_config(node.device, settings.quant)
        if qat is not None:
            model = prepare_qat(model, qat)
            calibrate(model, [torch.from_numpy(node.data.train.x[:CALIBRATION_WINDOWS])])
            step_hook = scale_gradients
        apply_plan(model, plan)
        trained = trainable_names(model, plan)
        batch_size = min(batch_size, plan.batch_size)
        # Linear scaling rule: a device that can only afford smaller batches takes smaller
        # steps, so that its many steps do not outweigh the clients training at full batch.
        lr *= batch_size / instructions.batch_size
        macs = count_macs(model, node.shape.in_channels, node.shape.window_length)
        compute_s = simulate_client_cost(
            node.device, macs, len(node.data.train), instructions.epochs, 0, 0
        ).compute_s
    config = TrainConfig(
        epochs=instructions.epochs,
        batch_size=batch_size,
        lr=lr,
        proximal_mu=instructions.proximal_mu,
    )
    seed = derive_seed(settings.seed, instructions.server_round, node.partition_id)
    started = time.perf_counter()
    x, y = node.data.train.x, node.data.train.y
    if instructions.head_epochs > 0:
        result = train_head_first(model, x, y, config, instructions.head_epochs, seed, step_hook)
    else:
        result = train_local(model, x, y, config, seed, step_hook)
    report = TrainReport(
        num_examples=result.num_examples,
        train_loss=result.mean_loss,
        num_steps=result.num_steps,
        compute_seconds=time.perf_counter() - started,
        sim_compute_s=compute_s,
    )
    state = model.state_dict()
    # Buffers (BatchNorm statistics) change in train mode even where parameters are frozen.
    parameters = {name for name, _ in model.named_parameters()}
    buffers = [name for name in state if name not in parameters]
    changed = list(state) if trained is None else [*trained, *buffers]
    return train_reply(state, report, identity, changed)


def evaluate_user(node: _Node, msg: Message) -> RecordDict:
    """The global model on the user's own (later in time) test windows."""
    instructions = eval_instructions_from_config(msg.content.config_records[CONFIG_KEY])
    model = _model_at(node, instructions.width)
    model.load_state_dict(arrays_to_state(msg.content.array_records[ARRAYS_KEY]))
    result = evaluate(model, node.data.test.x, node.data.test.y, node.shape.num_classes)
    report = EvalReport(
        num_examples=result.num_examples,
        eval_loss=result.loss,
        eval_accuracy=result.accuracy,
        eval_macro_f1=result.macro_f1,
    )
    identity = ClientIdentity(user=node.data.user, device=node.data.device)
    return eval_reply(report, identity)


def describe_node(settings: ClientSettings, node: _Node, context: Context) -> RecordDict:
    """Enrollment: who this node is, what it can train, and its public signing key."""
    identity = DeviceIdentity.from_seed(settings.seed, node.partition_id)
    width = 1.0 if node.device is None else max_width(node.device, node.shape, settings.quant)
    info = NodeInfo(
        node_id=context.node_id,
        partition_id=node.partition_id,
        user=node.data.user,
        device=node.data.device,
        max_width=width,
        signing_key=identity.signing_public_bytes(),
    )
    return node_info_record(info)


def make_client_app(settings_for: SettingsProvider, mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp whose handlers read their settings through ``settings_for(context)``."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        node = _node_for(settings, context)
        if node.partition_id in settings.crash_partitions:
            raise SimulatedCrash(f"simulated crash of node {node.partition_id} ({node.data.user})")
        if node.partition_id in settings.hang_partitions:
            time.sleep(settings.hang_seconds)
        return Message(train_user(settings, node, msg), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        node = _node_for(settings_for(context), context)
        return Message(evaluate_user(node, msg), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        return Message(describe_node(settings, _node_for(settings, context), context), reply_to=msg)

    return app
