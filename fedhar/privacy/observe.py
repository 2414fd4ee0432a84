"""What a server observes of one client: the delta its local update sends."""

from __future__ import annotations

import copy

import torch
from torch import nn

Update = dict[str, torch.Tensor]


def client_update(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, local_steps: int = 1, lr: float = 0.1
) -> Update:
    """``local - global`` after ``local_steps`` full-batch SGD steps on ``(x, y)`` in train mode
    (``local_steps=1``: FedSGD, the update is ``-lr`` times the gradient)."""
    local = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(local.parameters(), lr=lr)
    for _ in range(local_steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(local(x), y).backward()
        optimizer.step()
    start = dict(model.named_parameters())
    return {n: (p.detach() - start[n].detach()) for n, p in local.named_parameters()}


def update_norm(update: Update) -> float:
    return float(sum(float((t.double() ** 2).sum()) for t in update.values()) ** 0.5)
