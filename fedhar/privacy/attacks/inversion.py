"""Gradient inversion: the sensor window behind one client's update (DLG / Inverting Gradients).

The server knows the model it sent and sees the client's delta. It searches a window ``x``
whose simulated local update, ``local_steps`` SGD steps at ``local_lr`` from the sent model
on ``(x, label)`` in train mode, matches the observed delta: by cosine distance (Geiping et
al. 2020, Inverting Gradients) or squared distance (Zhu et al. 2019, DLG), plus an optional
total-variation prior along time. The label comes first from the head's bias
(`fedhar.privacy.attacks.labels.label_of_window`). ``local_steps=1`` is FedSGD; more steps
unroll FedAvg's local training, as Inverting Gradients does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedhar.privacy.observe import Update

DISTANCES = ("cosine", "l2")
OPTIMIZERS = ("lbfgs", "adam")


@dataclass(frozen=True)
class InversionConfig:
    """How hard the attacker searches."""

    iterations: int = 300  # L-BFGS iterations or Adam steps per restart
    restarts: int = 2  # random starts; the best match wins
    optimizer: str = "lbfgs"
    lr: float = 0.1  # Adam's step (signed gradients, as in Inverting Gradients)
    distance: str = "cosine"
    tv_weight: float = 0.0
    local_steps: int = 1  # what the client ran: 1 = FedSGD
    local_lr: float = 0.1
    init_std: float = 0.3

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance {self.distance!r}; valid: {list(DISTANCES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {list(OPTIMIZERS)}")


@dataclass(frozen=True)
class Reconstruction:
    window: np.ndarray  # (channels, time)
    label: int
    distance: float  # the best match's objective


def _simulated_update(model: nn.Module, params: dict[str, torch.Tensor],
                      buffers: dict[str, torch.Tensor], x: torch.Tensor, label: torch.Tensor,
                      config: InversionConfig) -> list[torch.Tensor]:  # fmt: skip
    current = dict(params)
    for _ in range(config.local_steps):
        state = {**current, **{n: b.clone() for n, b in buffers.items()}}
        loss = nn.functional.cross_entropy(functional_call(model, (state,), (x,)), label)
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=True)
        current = {n: p - config.local_lr * g for (n, p), g in zip(current.items(), grads,
                                                                    strict=True)}  # fmt: skip
    return [current[n] - params[n] for n in params]


def _distance(simulated: list[torch.Tensor], observed: list[torch.Tensor], kind: str
              ) -> torch.Tensor:  # fmt: skip
    a = torch.cat([t.flatten() for t in simulated])
    b = torch.cat([t.flatten() for t in observed])
    if kind == "cosine":
        return 1 - nn.functional.cosine_similarity(a, b, dim=0)
    return ((a - b) ** 2).sum() / (b**2).sum()


def invert(
    model: nn.Module,
    update: Update,
    shape: tuple[int, int],
    label: int,
    config: InversionConfig,
    seed: int,
) -> Reconstruction:
    """The window (``shape`` = channels, time) that best explains ``update``."""
    model = copy.deepcopy(model).double().train()  # the caller's model stays as it is
    params = {n: p.detach().double().requires_grad_(True) for n, p in model.named_parameters()}
    buffers = {n: b.detach().double() if b.is_floating_point() else b.detach()
               for n, b in model.named_buffers()}  # fmt: skip
    observed = [update[n].detach().double() for n in params]  # the params' order
    target = torch.tensor([label])
    best: Reconstruction | None = None
    for restart in range(config.restarts):
        generator = torch.Generator().manual_seed(seed * 1000 + restart)
        x = (config.init_std * torch.randn((1, *shape), generator=generator,
                                           dtype=torch.float64)).requires_grad_(True)  # fmt: skip

        def objective(x: torch.Tensor = x) -> torch.Tensor:  # bound now: one per restart
            simulated = _simulated_update(model, params, buffers, x, target, config)
            loss = _distance(simulated, observed, config.distance)
            if config.tv_weight:
                loss = loss + config.tv_weight * (x[..., 1:] - x[..., :-1]).abs().mean()
            return loss

        _optimize(x, objective, config)
        found = float(objective().detach())
        if best is None or found < best.distance:
            best = Reconstruction(x.detach()[0].float().numpy(), label, found)
    assert best is not None
    return best


def _optimize(
    x: torch.Tensor, objective: Callable[[], torch.Tensor], config: InversionConfig
) -> None:
    if config.optimizer == "lbfgs":
        lbfgs = torch.optim.LBFGS([x], lr=1, max_iter=config.iterations, history_size=50,
                                  line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        lbfgs.step(closure)
        return
    adam = torch.optim.Adam([x], lr=config.lr)
    steps = config.iterations
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        adam, [steps * 3 // 8, steps * 5 // 8, steps * 7 // 8], 0.1
    )
    for _ in range(steps):
        adam.zero_grad()
        objective().backward()
        assert x.grad is not None
        x.grad.sign_()
        adam.step()
        schedule.step()


def channel_correlation(true: np.ndarray, found: np.ndarray) -> float:
    """Mean over channels of the Pearson correlation between two (channels, time) windows."""
    values = []
    for a, b in zip(true, found, strict=True):
        if a.std() == 0 or b.std() == 0:
            values.append(0.0)
        else:
            values.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(values))


def mse(true: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean((true - found) ** 2))
