"""Masked averaging of partial updates: each element averages over the clients that trained it.

Pure functions on tensors and weights (number of examples). Floating entries average in
float64 and return in their own dtype; integer entries (``num_batches_tracked``) take the
maximum, since averaging a counter has no meaning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]
Contribution = tuple[State, State, float]  # (values, mask, weight) in global coordinates


def _check_weights(weights: Sequence[float]) -> None:
    bad = [w for w in weights if not w >= 0]
    if bad:
        raise ValueError(f"weights must be >= 0 (numbers of examples), got {bad}")


def _entry(state: State, name: str, shape: torch.Size) -> torch.Tensor:
    if name not in state:
        raise ValueError(f"a state lacks entry {name!r}; every state needs the same names")
    t = state[name].detach()
    if t.shape != shape:
        raise ValueError(f"{name}: shape {tuple(t.shape)} != expected {tuple(shape)}")
    return t


def aggregate_masked(
    global_state: State, contributions: Sequence[Contribution]
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Average every element over the clients whose mask covers it, weighted by examples.

    Elements no client trained keep their global value. A contribution may omit entries it
    did not train. Masks may be bool or float in [0, 1] (a float scales that client's weight).

    Returns
    -------
    new_state
        The aggregated state, same names, shapes and dtypes as ``global_state``.
    contributors_per_layer
        Per entry, how many clients with positive weight trained any of its elements.
    """
    _check_weights([w for _, _, w in contributions])
    for i, (values, mask, _) in enumerate(contributions):
        unknown = sorted((set(values) | set(mask)) - set(global_state))
        if unknown:
            raise ValueError(f"contribution {i} names entries not in the global state: {unknown}")
        if set(values) != set(mask):
            raise ValueError(f"contribution {i}: values and mask name different entries")
    new_state: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for name, g in global_state.items():
        g = g.detach()
        parts = [
            (_entry(values, name, g.shape), _entry(mask, name, g.shape), float(w))
            for values, mask, w in contributions
            if name in values
        ]
        counts[name] = sum(1 for _, m, w in parts if w > 0 and bool(m.any()))
        if not g.is_floating_point():
            new_state[name] = _max_masked(g, [(v, m) for v, m, w in parts if w > 0])
            continue
        num = torch.zeros(g.shape, dtype=torch.float64)
        den = torch.zeros(g.shape, dtype=torch.float64)
        for v, m, w in parts:
            wm = w * m.to(torch.float64)
            num = num + wm * v.to(torch.float64)
            den = den + wm
        trained = den > 0
        avg = (num / torch.where(trained, den, 1.0)).to(g.dtype)
        new_state[name] = torch.where(trained, avg, g)
    return new_state, counts


def _max_masked(
    g: torch.Tensor, parts: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """Element-wise max over covered client values; uncovered elements keep ``g``."""
    out = g.clone()
    covered = torch.zeros(g.shape, dtype=torch.bool)
    for v, m in parts:
        m = m.to(torch.bool)
        first = m & ~covered
        out = torch.where(first, v.to(g.dtype), torch.where(m, torch.maximum(out, v), out))
        covered = covered | m
    return out
