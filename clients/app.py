"""The fedhar ClientApp: one simulated node is one user on one simulated device.

Handlers are thin: decode the message, call one fedhar function, encode the reply. A node's
user comes from its ``partition-id``; its data is loaded lazily, the first time the node is
asked to work in a given worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from torch import nn

from fedhar.device.local_update import (
    QuantSettings,
    as_recorded,
    max_width,
    run_local_update,
)
from fedhar.device.planner import PlanDeclined
from fedhar.device.profiles import DeviceProfile
from fedhar.device.sensors import SensorVariability
from fedhar.federation import ClientData, FederationSpec, federation_index, load_client
from fedhar.models import ModelShape
from fedhar.partial.static_bn import install_scaler, width_sums
from fedhar.privacy.accounting import sample_level_epsilon
from fedhar.privacy.dpsgd import DpSgd, planned_steps, train_dp_sgd
from fedhar.seeding import derive_seed
from fedhar.train import TrainConfig, evaluate
from fedhar.transport.keystore import RunKeys
from fedhar.transport.signed import enrollment_statement
from fedhar.wire import (
    ARRAYS_KEY,
    BN_STATS_ACTION,
    CHALLENGE_KEY,
    CONFIG_KEY,
    RUN_ID_KEY,
    ClientIdentity,
    EvalReport,
    NodeInfo,
    TrainReport,
    arrays_to_state,
    bn_stats_request_from_record,
    bn_sums_reply,
    config_bytes,
    decline_reply,
    eval_instructions_from_config,
    eval_reply,
    instructions_from_config,
    node_claims,
    node_info_record,
    state_to_arrays,
    to_config_record,
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
    poison_partitions: tuple[int, ...] = ()  # simulated attackers: they send a scaled update
    poison_scale: float = -4.0  # their update: global + scale * (trained - global)
    dp_sgd: DpSgd | None = None  # sample-level DP-SGD in every local update; None: plain SGD
    keys: RunKeys | None = None  # the devices' private keys; None: this node cannot enroll

    def device_of(self, user: str) -> DeviceProfile | None:
        return dict(self.devices).get(user)


SettingsProvider = Callable[[Context], ClientSettings]
DP_LEDGER_KEY = "dp-sgd-ledger"  # context.state: the device's DP-SGD history (sample rates, steps)


class SimulatedCrash(RuntimeError):
    """A configured device crash, used to study fault tolerance."""


def poisoned(content: RecordDict, msg: Message, scale: float) -> RecordDict:
    """A simulated attacker's train reply: each floating-point entry becomes ``global +
    scale * (trained - global)`` (a negative scale flips and boosts the honest update, the
    Byzantine attack robust aggregation is meant to withstand). Declines pass as they are."""
    if ARRAYS_KEY not in content.array_records:
        return content
    sent = arrays_to_state(msg.content.array_records[ARRAYS_KEY])
    trained = arrays_to_state(content.array_records[ARRAYS_KEY])
    content.array_records[ARRAYS_KEY] = state_to_arrays(
        {
            name: sent[name] + scale * (value - sent[name])
            if value.is_floating_point() and name in sent
            else value
            for name, value in trained.items()
        }
    )
    return content


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
        data = as_recorded(data, device, settings.variability, settings.seed)
    _, channels, length = data.train.x.shape
    shape = ModelShape(settings.model, channels, data.train.num_classes, length)
    return _Node(partition_id, data, device, shape)


def _node_for(settings: ClientSettings, context: Context) -> _Node:
    return _node(settings, int(context.node_config["partition-id"]))


def train_user(
    settings: ClientSettings, node: _Node, msg: Message, state: RecordDict
) -> RecordDict:
    """One local update of one user, within their device's SRAM plan (``state``: the node's
    ``context.state``, which keeps its DP-SGD ledger)."""
    instructions = instructions_from_config(msg.content.config_records[CONFIG_KEY])
    identity = ClientIdentity(user=node.data.user, device=node.data.device)
    model = node.shape.build(instructions.width)
    model.load_state_dict(arrays_to_state(msg.content.array_records[ARRAYS_KEY]))
    if instructions.scaler:
        install_scaler(model, instructions.width)
    config = TrainConfig(
        epochs=instructions.epochs,
        batch_size=instructions.batch_size,
        lr=instructions.lr,
        proximal_mu=instructions.proximal_mu,
    )
    seed = derive_seed(settings.seed, instructions.server_round, node.partition_id)
    if settings.dp_sgd is not None:
        return train_user_private(settings.dp_sgd, node, model, config, seed, state, identity)
    try:
        result = run_local_update(
            model, node.device, node.shape, instructions.width, settings.quant, config,
            node.data.train, seed, instructions.head_epochs,
        )  # fmt: skip
    except PlanDeclined as declined:
        return decline_reply(f"no-plan: {declined.reason}", identity)
    report = TrainReport(
        num_examples=result.train.num_examples,
        train_loss=result.train.mean_loss,
        num_steps=result.train.num_steps,
        compute_seconds=result.compute_seconds,
        sim_compute_s=result.sim_compute_s,
    )
    return train_reply(result.state, report, identity, list(result.changed))


def dp_history(state: RecordDict) -> list[tuple[float, int]]:
    """The device's DP-SGD ledger: (sample rate, steps) of every update it ran."""
    record = state.config_records.get(DP_LEDGER_KEY)
    if record is None:
        return []
    rates, steps = record["rates"], record["steps"]
    if not isinstance(rates, list) or not isinstance(steps, list) or len(rates) != len(steps):
        raise ValueError(f"node state {DP_LEDGER_KEY!r} is malformed: {record!r}")
    return [(float(r), int(n)) for r, n in zip(rates, steps, strict=True)]  # type: ignore[arg-type, call-overload]


def save_dp_history(state: RecordDict, history: list[tuple[float, int]]) -> None:
    rates = [float(rate) for rate, _ in history]
    steps = [int(count) for _, count in history]
    state[DP_LEDGER_KEY] = ConfigRecord({"rates": rates, "steps": steps})


def train_user_private(
    dp: DpSgd,
    node: _Node,
    model: nn.Module,
    config: TrainConfig,
    seed: int,
    state: RecordDict,
    identity: ClientIdentity,
) -> RecordDict:
    """A DP-SGD local update; the device declines one that would take its epsilon past its
    budget, and reports its epsilon after the update."""
    history = dp_history(state)
    planned = planned_steps(len(node.data.train), config)
    epsilon = sample_level_epsilon(dp.noise_multiplier, [*history, planned], dp.delta)
    if dp.epsilon_budget is not None and epsilon > dp.epsilon_budget:
        spent = sample_level_epsilon(dp.noise_multiplier, history, dp.delta)
        return decline_reply(
            f"dp-budget: this update would take epsilon to {epsilon:.3f}, over the budget "
            f"{dp.epsilon_budget:g} (spent: {spent:.3f})",
            identity,
        )
    started = time.perf_counter()
    result = train_dp_sgd(model, node.data.train.x, node.data.train.y, config, dp, seed)
    save_dp_history(state, [*history, (result.sample_rate, result.steps)])
    report = TrainReport(
        num_examples=result.train.num_examples,
        train_loss=result.train.mean_loss,
        num_steps=result.train.num_steps,
        compute_seconds=time.perf_counter() - started,
        dp_epsilon=epsilon,
        dp_epsilon_next=sample_level_epsilon(
            dp.noise_multiplier, [*history, planned, planned], dp.delta
        ),
    )
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    buffers = [name for name in model.state_dict() if name not in dict(model.named_parameters())]
    return train_reply(model.state_dict(), report, identity, [*trained, *buffers])


def evaluate_user(node: _Node, msg: Message) -> RecordDict:
    """The global model on the user's own (later in time) test windows."""
    instructions = eval_instructions_from_config(msg.content.config_records[CONFIG_KEY])
    model = node.shape.build(instructions.width)
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


def batchnorm_sums_of_user(settings: ClientSettings, node: _Node, msg: Message) -> RecordDict:
    """Static BatchNorm: sums of the global model's BatchNorm inputs over the user's recorded
    training windows, at each width asked for (an inference pass, no training)."""
    state, widths, batch_size = bn_stats_request_from_record(msg.content)
    return bn_sums_reply(width_sums(settings.model, state, widths, node.data.train.x, batch_size))


def describe_node(
    settings: ClientSettings, partition_id: int, context: Context, query: ConfigRecord
) -> RecordDict:
    """Enrollment: who this node is, what it can train, how many windows it holds, its
    device's public keys, and its signature over the server's challenge (``query``), which
    proves it holds the private key.

    Answered from the federation's user list, window counts and the model's shape, without
    reading the user's windows.
    """
    if settings.keys is None:
        raise ValueError(
            "client settings without keys cannot enroll; build them with "
            "experiments.compose.client_settings(cfg, federation, run_dir)"
        )
    index = federation_index(settings.federation)
    user = index.clients[partition_id]
    device = settings.device_of(user)
    shape = ModelShape(settings.model, *index.shape)
    width = 1.0 if device is None else max_width(device, shape, settings.quant)
    info = NodeInfo(
        node_id=context.node_id,
        partition_id=partition_id,
        user=user,
        device=index.devices[user] if device is None else device.name,
        max_width=width,
        num_windows=index.windows[user],
    )
    identity = settings.keys.device(partition_id)
    public = identity.public_keys()
    statement = enrollment_statement(
        config_bytes(query, CHALLENGE_KEY), str(query[RUN_ID_KEY]), context.node_id,
        node_claims(to_config_record(info)), public,
    )  # fmt: skip
    return node_info_record(info, public, identity.sign(statement))


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
        content = train_user(settings, node, msg, context.state)
        if node.partition_id in settings.poison_partitions:
            content = poisoned(content, msg, settings.poison_scale)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        node = _node_for(settings_for(context), context)
        return Message(evaluate_user(node, msg), reply_to=msg)

    @app.query(BN_STATS_ACTION)
    def batchnorm_statistics(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        node = _node_for(settings, context)
        return Message(batchnorm_sums_of_user(settings, node, msg), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        partition_id = int(context.node_config["partition-id"])
        query = msg.content.config_records[CONFIG_KEY]
        return Message(
            describe_node(settings_for(context), partition_id, context, query), reply_to=msg
        )

    return app
