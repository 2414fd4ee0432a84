"""Local fine-tuning of a model on one user's windows, within their device's training plan.

The device's SRAM plan (`fedhar.device.local_update.prepare_local_update`) fixes which
parameters may train, the batch size and whether training runs with QAT; a fine-tuning
``scope`` narrows that further (the head, or the biases), never widens it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from fedhar.data.dataset import WindowDataset
from fedhar.device.local_update import QuantSettings, prepare_local_update
from fedhar.device.profiles import DeviceProfile
from fedhar.models import ModelShape
from fedhar.train import TrainConfig, TrainResult, train_local

SCOPES = ("all", "head", "bias")


@dataclass(frozen=True)
class FineTune:
    """How a user adapts a model: which parameters, and how long."""

    scope: str = "all"  # all: whatever the device's plan trains | head | bias
    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.01  # smaller than federated training: adapt, do not forget

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown fine-tuning scope {self.scope!r}; valid: {list(SCOPES)}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"fine-tuning needs epochs, batch_size >= 1 and lr > 0: {self}")


@dataclass(frozen=True)
class Adapted:
    model: nn.Module  # QAT-prepared where the device trains in integers
    trained: tuple[str, ...]  # parameters fine-tuning changed
    batch_size: int  # the batch the device could afford
    train: TrainResult


def in_scope(name: str, scope: str) -> bool:
    if scope == "head":
        return name.startswith("head.")
    if scope == "bias":
        return name.rsplit(".", 1)[-1].startswith("bias")
    return True


def fine_tune(
    model: nn.Module,
    shape: ModelShape,
    device: DeviceProfile | None,
    quant: QuantSettings,
    windows: WindowDataset,
    tune: FineTune,
    seed: int,
) -> Adapted:
    """``model`` (full width) fine-tuned on ``windows`` within ``device``'s plan.

    Raises
    ------
    fedhar.device.planner.PlanDeclined
        When the device cannot train the model at all.
    ValueError
        When the plan and the scope leave no parameter to train.
    """
    config = TrainConfig(epochs=tune.epochs, batch_size=tune.batch_size, lr=tune.lr)
    update = prepare_local_update(model, device, shape, 1.0, quant, config, windows.x)
    allowed = set(update.trainable) if update.trainable is not None else None
    trained = tuple(
        name
        for name, _ in update.model.named_parameters()
        if (allowed is None or name in allowed) and in_scope(name, tune.scope)
    )
    if not trained:
        raise ValueError(
            f"fine-tuning scope {tune.scope!r} leaves nothing the device's plan may train"
        )
    for name, param in update.model.named_parameters():
        param.requires_grad_(name in trained)
    planned = replace(update.config, epochs=tune.epochs)
    result = train_local(update.model, windows.x, windows.y, planned, seed, update.step_hook)
    return Adapted(update.model, trained, planned.batch_size, result)
