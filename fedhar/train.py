"""Local training and evaluation loops on windowed HAR tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from fedhar.metrics import accuracy, confusion_matrix, macro_f1
from fedhar.seeding import seed_everything


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one local update."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9  # SGD with momentum: one state tensor per parameter (memory model)
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx term mu/2 * ||w - w_global||^2; 0 disables it
    max_steps: int | None = None  # cap on optimizer steps, for simulated compute budgets


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    num_steps: int
    mean_loss: float


@dataclass(frozen=True)
class EvalResult:
    num_examples: int
    loss: float
    accuracy: float
    macro_f1: float
    confusion: np.ndarray  # (K, K) rows true, columns predicted


def train_local(
    model: nn.Module,
    x: np.ndarray,  # (N, C, T)
    y: np.ndarray,  # (N,)
    config: TrainConfig,
    seed: int,
    step_hook: Callable[[nn.Module], None] | None = None,
) -> TrainResult:
    """Run SGD over the local data; only parameters with ``requires_grad`` change.

    ``step_hook`` runs after each backward pass and before the optimizer step (used for
    gradient post-processing such as quantization-aware scaling).
    """
    if len(x) == 0:
        raise ValueError("train_local got no training windows")
    generator = seed_everything(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_local: the model has no trainable parameters")
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    anchors = [p.detach().clone() for p in params] if config.proximal_mu > 0 else []
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y).long()
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    steps, total_loss = 0, 0.0
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) == 1 < config.batch_size:
                continue  # a trailing singleton of a larger batch size adds noise, not signal
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs[batch]), targets[batch])
            if anchors:
                loss = loss + 0.5 * config.proximal_mu * sum(
                    ((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True)
                )
            loss.backward()
            if step_hook is not None:
                step_hook(model)
            optimizer.step()
            steps += 1
            total_loss += float(loss.detach())
            if config.max_steps is not None and steps >= config.max_steps:
                return TrainResult(len(x), steps, total_loss / steps)
    return TrainResult(len(x), steps, total_loss / max(steps, 1))


def train_head_first(
    model: nn.Module,
    x: np.ndarray,  # (N, C, T)
    y: np.ndarray,  # (N,)
    config: TrainConfig,
    head_epochs: int,
    seed: int,
    step_hook: Callable[[nn.Module], None] | None = None,
    head_prefix: str = "head.",
) -> TrainResult:
    """FedRep's local schedule (Collins et al. 2021): the head alone for ``head_epochs``,
    then the body alone for ``config.epochs``; parameters frozen before stay frozen."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    phases = ((True, replace(config, epochs=head_epochs)), (False, config))
    results = []
    for phase, (head_phase, phase_config) in enumerate(phases):
        if phase_config.epochs == 0:
            continue
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable and name.startswith(head_prefix) == head_phase)
        if any(p.requires_grad for p in model.parameters()):
            results.append(train_local(model, x, y, phase_config, seed + phase, step_hook))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    steps = sum(r.num_steps for r in results)
    loss = sum(r.mean_loss * r.num_steps for r in results) / max(steps, 1)
    return TrainResult(len(x), steps, loss)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits for every window; (N, K) float32."""
    model.eval()
    outputs = [
        model(torch.from_numpy(x[start : start + batch_size])).numpy()
        for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, num_classes: int) -> EvalResult:
    """Loss, accuracy, macro-F1 and confusion matrix of ``model`` on (x, y)."""
    if len(x) == 0:
        raise ValueError("evaluate got no windows")
    logits = predict(model, x)
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y).long()))
    confusion = confusion_matrix(y, logits.argmax(axis=1), num_classes)
    return EvalResult(len(x), loss, accuracy(confusion), macro_f1(confusion), confusion)
