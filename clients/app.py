"""The fedhar ClientApp: one simulated node is one user.

Handlers are thin: decode the message, call fedhar, encode the reply. A node's user comes
from its ``partition-id``; its data is loaded lazily, the first time the node is asked to
work in a given worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedhar.federation import ClientData, FederationSpec, load_federation
from fedhar.models import build_model
from fedhar.train import TrainConfig, derive_seed, evaluate, train_local
from fedhar.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    ClientIdentity,
    EvalReport,
    TrainReport,
    arrays_to_state,
    eval_reply,
    instructions_from_config,
    train_reply,
)


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs that does not change from round to round."""

    federation: FederationSpec
    model: str
    width: float = 1.0
    seed: int = 0
    crash_partitions: tuple[int, ...] = ()  # simulated device crashes: these nodes always fail


SettingsProvider = Callable[[Context], ClientSettings]


class SimulatedCrash(RuntimeError):
    """A configured device crash, used to study fault tolerance."""


def _client_data(settings: ClientSettings, context: Context) -> tuple[int, ClientData]:
    partition_id = int(context.node_config["partition-id"])
    return partition_id, load_federation(settings.federation).client(partition_id)


def make_client_app(settings_for: SettingsProvider) -> ClientApp:
    """A ClientApp whose handlers read their settings through ``settings_for(context)``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        partition_id, data = _client_data(settings, context)
        if partition_id in settings.crash_partitions:
            raise SimulatedCrash(f"simulated crash of node {partition_id} ({data.user})")
        instructions = instructions_from_config(msg.content[CONFIG_KEY])
        federation = load_federation(settings.federation)
        model = build_model(
            settings.model, federation.in_channels, federation.num_classes, settings.width
        )
        model.load_state_dict(arrays_to_state(msg.content[ARRAYS_KEY]))
        config = TrainConfig(
            epochs=instructions.epochs,
            batch_size=instructions.batch_size,
            lr=instructions.lr,
            proximal_mu=instructions.proximal_mu,
        )
        seed = derive_seed(settings.seed, instructions.server_round, partition_id)
        started = time.perf_counter()
        result = train_local(model, data.train.x, data.train.y, config, seed)
        report = TrainReport(
            num_examples=result.num_examples,
            train_loss=result.mean_loss,
            num_steps=result.num_steps,
            compute_seconds=time.perf_counter() - started,
        )
        identity = ClientIdentity(user=data.user, device=data.device)
        return Message(train_reply(model.state_dict(), report, identity), reply_to=msg)

    @app.evaluate()
    def evaluate_user(msg: Message, context: Context) -> Message:
        settings = settings_for(context)
        _, data = _client_data(settings, context)
        federation = load_federation(settings.federation)
        model = build_model(
            settings.model, federation.in_channels, federation.num_classes, settings.width
        )
        model.load_state_dict(arrays_to_state(msg.content[ARRAYS_KEY]))
        result = evaluate(model, data.test.x, data.test.y, federation.num_classes)
        report = EvalReport(
            num_examples=result.num_examples,
            eval_loss=result.loss,
            eval_accuracy=result.accuracy,
            eval_macro_f1=result.macro_f1,
        )
        identity = ClientIdentity(user=data.user, device=data.device)
        return Message(eval_reply(report, identity), reply_to=msg)

    return app
