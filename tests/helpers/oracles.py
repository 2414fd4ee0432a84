"""Reference implementations that tests compare fedhar's code against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Plain FedAvg: every entry averaged over all states, weighted by ``weights``, in float64
    and cast back; integer entries (step counters) take the maximum."""
    assert states and len(states) == len(weights) and sum(weights) > 0
    total = float(sum(float(w) for w in weights))
    out: dict[str, torch.Tensor] = {}
    for name, first in states[0].items():
        tensors = [state[name] for state in states]
        if not first.is_floating_point():
            out[name] = torch.stack(tensors).amax(dim=0)
            continue
        num = torch.zeros(first.shape, dtype=torch.float64)
        for t, w in zip(tensors, weights, strict=True):
            num = num + float(w) * t.to(torch.float64)
        out[name] = (num / total).to(first.dtype)
    return out
