"""Simulated time, energy and availability of a client's round on its device."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedhar.device.profiles import DeviceProfile
from fedhar.models.ops import OpCounts, dummy_forward, layer_ops, leaf_layers

# Cycles per non-MAC operation on a microcontroller core. Assumed, not measured: a compare or an
# add is one instruction; requantizing an int32 accumulator to int8 is a fixed-point multiply,
# shift, add and clamp; sigmoid and tanh are table look-ups with interpolation, as int8 kernel
# libraries (CMSIS-NN) compute them. One table for every core: experiments.bench.cycles checks it
# against ESP-NN's per-kernel cycles on the ESP32-S3, the only such figures found.
CYCLES_PER_OP = {"compares": 1.0, "elementwise": 1.0, "nonlinear": 20.0, "requantize": 4.0}


@dataclass(frozen=True)
class ClientCost:
    """One client's simulated round: seconds per phase and energy in joules."""

    compute_s: float
    upload_s: float
    download_s: float
    energy_j: float
    total_s: float = field(init=False)  # download, train, upload, one after another

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_s", self.download_s + self.compute_s + self.upload_s)


def _lstm_recurrent_macs(module: nn.LSTM, x: torch.Tensor) -> int:
    """MACs that BPTT of one LSTM call needs even with no gradient for its input: the
    hidden-to-hidden products, and the input gradients of every layer above the first."""
    directions = 2 if module.bidirectional else 1
    h, steps = module.hidden_size, x.shape[0] * x.shape[1]
    recurrent = steps * directions * module.num_layers * 4 * h * h
    between = steps * directions * (module.num_layers - 1) * 4 * h * h * directions
    return recurrent + between


def training_ops(
    model: nn.Module, in_channels: int, window_length: int, trainable: Collection[str] | None
) -> OpCounts:
    """Operations of one training step on one window: the forward pass, and the backward pass
    that the trained parameters (``None``: all) need.

    Walking the layers input to output, a layer back-propagates to its input (its MACs again,
    and its element-wise work) only when a layer before it trains; it computes its weight
    gradient (its MACs again) only when its weight trains. A trained LSTM also back-propagates
    through time (its hidden-to-hidden MACs), with or without gradient for its input. Bias
    gradients cost no MACs.
    """
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[nn.Module, OpCounts, int]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        recurrent = _lstm_recurrent_macs(module, inputs[0]) if isinstance(module, nn.LSTM) else 0
        calls.append((module, layer_ops(module, inputs, output), recurrent))

    handles = [m.register_forward_hook(hook) for m in leaf_layers(model)]
    try:
        dummy_forward(model, in_channels, window_length)
    finally:
        for handle in handles:
            handle.remove()
    total, upstream = OpCounts(), False
    for module, ops, recurrent in calls:
        total.add(ops)
        own = [f"{names[module]}.{n}" for n, _ in module.named_parameters(recurse=False)]
        trained = [n for n in own if trainable is None or n in trainable]
        weight = any(n.rsplit(".", 1)[-1].startswith("weight") for n in trained)
        if upstream:  # the input gradient, and the element-wise backward on the way
            total.add(OpCounts(ops.macs, ops.compares, ops.elementwise, ops.nonlinear))
        elif trained and recurrent:
            total.macs += recurrent
        if weight:
            total.macs += ops.macs
        upstream = upstream or bool(trained)
    return total


def simulate_client_cost(
    profile: DeviceProfile,
    ops_per_window: OpCounts,
    num_windows: int,
    epochs: int,
    upload_bytes: int,
    download_bytes: int,
) -> ClientCost:
    """Time and energy of local training plus model transfer on `profile`.

    compute_s = `compute_seconds` of one window's training step (`training_ops`) * windows *
    epochs; transfer seconds are exact bytes * 8 / radio bandwidth;
    energy = active_power_w * compute_s + radio_power_w * transfer seconds
    (the radio and the CPU are not busy at the same time).
    """
    if min(num_windows, epochs, upload_bytes, download_bytes) < 0:
        raise ValueError("windows, epochs and byte counts must be non-negative")
    compute_s = compute_seconds(profile, ops_per_window) * num_windows * epochs
    upload_s = upload_bytes * 8 / profile.radio_bandwidth_bps
    download_s = download_bytes * 8 / profile.radio_bandwidth_bps
    energy_j = profile.active_power_w * compute_s + profile.radio_power_w * (upload_s + download_s)
    return ClientCost(compute_s, upload_s, download_s, energy_j)


def compute_seconds(profile: DeviceProfile, ops: OpCounts) -> float:
    """Time of `ops` on `profile`: MACs at its MAC rate plus the non-MAC operations at
    `CYCLES_PER_OP`, over its clock."""
    cycles = ops.macs / profile.macs_per_cycle
    cycles += sum(getattr(ops, kind) * per_op for kind, per_op in CYCLES_PER_OP.items())
    return cycles / profile.clock_hz


def is_available(
    profile: DeviceProfile,
    server_round: int,
    node_seed: int,
    trace: Sequence[int] | None = None,
) -> bool:
    """Whether the device takes part in `server_round`.

    With a `trace` (0/1 per round, cycled; entry 0 is round 1) the trace decides; otherwise a
    draw with probability `profile.availability`, fixed by (node_seed, server_round).
    """
    if trace is not None:
        if len(trace) == 0 or any(bit not in (0, 1) for bit in trace):
            raise ValueError(f"an availability trace is a non-empty list of 0/1, got {trace}")
        return bool(trace[(server_round - 1) % len(trace)])
    draw = np.random.default_rng([node_seed, server_round]).random()
    return bool(draw < profile.availability)


def straggles(cost: ClientCost, deadline_s: float | None) -> bool:
    """True when the client misses the round deadline (never without a deadline)."""
    return deadline_s is not None and cost.total_s > deadline_s


@dataclass(frozen=True)
class RoundCosts:
    """What a round cost the fleet."""

    wall_clock_s: float  # until the last counted reply, or the deadline if someone straggled
    energy_j: float  # spent by every participant, stragglers until the deadline
    participants: int  # clients that started training
    completed: int  # replies that made the deadline
    stragglers: int  # replies that missed it
    dropouts: int  # sampled clients that were not available this round
    declines: int  # clients that answered they cannot train (e.g. no plan fits their SRAM)


def summarize_round(
    costs: Sequence[ClientCost],
    deadline_s: float | None = None,
    dropouts: int = 0,
    declines: int = 0,
) -> RoundCosts:
    """Fold the participants' costs into one round summary.

    Stragglers are cut at the deadline: their energy counts pro rata up to it, and the server
    waits until the deadline for them.
    """
    late = [straggles(cost, deadline_s) for cost in costs]
    on_time = [cost.total_s for cost, is_late in zip(costs, late, strict=True) if not is_late]
    wall_clock = max(on_time, default=0.0)
    if any(late) and deadline_s is not None:
        wall_clock = deadline_s
    cut = deadline_s if deadline_s is not None else float("inf")
    energy = sum(
        cost.energy_j * min(1.0, cut / cost.total_s) if cost.total_s else 0.0 for cost in costs
    )
    return RoundCosts(
        wall_clock_s=wall_clock,
        energy_j=energy,
        participants=len(costs),
        completed=len(on_time),
        stragglers=sum(late),
        dropouts=dropouts,
        declines=declines,
    )
