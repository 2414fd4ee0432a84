"""Personal layers: parts of the model that stay on each node and are never aggregated.

The server side of FedPer, FedRep and FedBN. Each differs from `MaskedFedAvg` only in which
state entries are personal; `MaskedFedAvg` sends those entries to a node only until it has
replied once, names them in the config (``personal-names``) and never aggregates them. The
client mod `clients.personal.personal_layers` keeps them in the node's ``context.state``.

Nodes train static leading slices (HeteroFL's policy): the widest level each device holds,
the same every round, so a node's personal entries keep their shape. Each node is evaluated
at that width with its own personal entries.

The global model's personal entries keep their initial values, so the server-side evaluation
of the global model means little here; the per-user scores (each node with its own personal
entries) are the measure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import nn

from fedhar.partial.spec import select_head, select_without_batchnorm
from fedhar.partial.widths import HeteroFLWidths, WidthPolicy
from fedhar.wire import HEAD_EPOCHS_KEY
from strategies.masked import MaskedFedAvg


class PersonalLayers(MaskedFedAvg):
    """Masked FedAvg on static widths; subclasses name the personal entries."""

    def width_policy(self) -> WidthPolicy:
        """Largest fitting level, offset 0, every round."""
        return HeteroFLWidths(self.levels)


class FedPer(PersonalLayers):
    """Shared body, personal classifier head.

    Arivazhagan, Aggarwal, Singh, Choudhary. "Federated Learning with Personalization
    Layers." arXiv:1912.00818, 2019.
    """

    def personal_names(self, model: nn.Module) -> tuple[str, ...]:
        """The ``head.*`` entries."""
        return select_head(model).names


class FedBN(PersonalLayers):
    """Everything shared except BatchNorm: its affine parameters and running statistics stay
    local, which absorbs each device's feature shift (sensor gain, placement, rate).

    Li, Jiang, Zhang, Kamp, Dou. "FedBN: Federated Learning on Non-IID Features via Local
    Batch Normalization." ICLR 2021.
    """

    def personal_names(self, model: nn.Module) -> tuple[str, ...]:
        """Every BatchNorm entry (weight, bias, running mean and variance, batch counter)."""
        shared = set(select_without_batchnorm(model).names)
        return tuple(name for name in model.state_dict() if name not in shared)


class FedRep(FedPer):
    """Shared representation, personal head trained first with the body frozen.

    Sends ``head-epochs`` with every train message: the local update first trains the head
    alone for that many epochs, then the body (the config's ``epochs``) with the head frozen.
    A client that does not implement the two-phase schedule trains head and body jointly,
    which is FedPer's update.

    Collins, Hassani, Mokhtari, Shakkottai. "Exploiting Shared Representations for
    Personalized Federated Learning." ICML 2021.

    Parameters
    ----------
    head_epochs : int
        Local epochs on the head before the body's epochs (the paper uses several).
    **kwargs
        As for `MaskedFedAvg`.
    """

    def __init__(self, head_epochs: int = 1, **kwargs: Any) -> None:
        if head_epochs < 0:
            raise ValueError(f"head_epochs must be >= 0, got {head_epochs}")
        super().__init__(**kwargs)
        self.head_epochs = head_epochs

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """MaskedFedAvg's messages with the head-first epochs in the config."""
        config[HEAD_EPOCHS_KEY] = self.head_epochs
        return super().configure_train(server_round, arrays, config, grid)
