"""SRAM of one training step as an on-device training engine stores it (the ``device`` model).

Unlike ``fedhar.device.memory`` (what PyTorch on this host saves), this counts what a
tiny-training engine keeps (Lin et al. 2022, "On-Device Training Under 256KB Memory"):

- parameters at the weight bits; gradients and optimizer state for trained tensors only;
- saved activations at the activation bits, and only what backward needs: a Conv1d or Linear
  keeps its input when its weight trains; BatchNorm keeps its normalized input (and its
  per-channel mean and inverse std in fp32) when gradient reaches it; ReLU and Dropout keep a
  1-bit mask and a max-pool the argmax of each output (ceil(log2(kernel)) bits) when gradient
  must pass them; an LSTM keeps, per step and direction, its four gate activations and its cell
  state, plus its hidden states and its input when its weights train (the minimal
  backpropagation-through-time store);
- the largest working buffers: a layer's input and output in the forward pass, or its output
  and input gradients in the backward pass;
- the input batch at the activation bits.

``fedhar.device.reference_step`` runs a training step that really stores exactly these tensors,
and its gradients match the float step; ``experiments.bench.memory`` compares the two.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from torch import nn

from fedhar.device.memory import (
    FP32,
    BitWidths,
    LayerCall,
    MemoryEstimate,
    check_trainable,
    static_bytes,
    trace_layers,
)

STATISTIC_BITS = 32  # BatchNorm's batch mean and inverse std stay fp32


def _bits_per_index(kernel: int) -> int:
    """Bits that name the winner among `kernel` inputs (the reference step pools pairs: 1)."""
    return max(1, math.ceil(math.log2(kernel)))


def _lstm_store(module: nn.LSTM, call: LayerCall, trains: bool) -> int:
    """Elements (per window) of the minimal BPTT store of one LSTM call."""
    _, steps, features = call.in_shape  # (1, T, F), batch first
    directions, h = 1 + int(module.bidirectional), module.hidden_size
    store = module.num_layers * directions * steps * 5 * h  # gates i, f, g, o and the cell
    if trains:
        store += module.num_layers * directions * steps * h  # hidden states, for dW_hh
        store += steps * features  # the input, for dW_ih (deeper layers read stored states)
    return store


def _saved_bits(call: LayerCall, weight_trains: bool, gradient_out: bool, gradient_in: bool,
                bits: BitWidths) -> tuple[int, int]:  # fmt: skip
    """Bits a call keeps for backward: per window of the batch, and once per batch."""
    module, act = call.module, bits.activations
    if isinstance(module, nn.Conv1d | nn.Linear):
        return (call.in_numel * act if weight_trains else 0), 0
    if isinstance(module, nn.BatchNorm1d):  # the normalized input; the batch mean and inv std
        if not gradient_out:
            return 0, 0
        return call.in_numel * act, 2 * module.num_features * STATISTIC_BITS
    if isinstance(module, nn.ReLU | nn.Dropout):
        return (call.out_numel if gradient_in else 0), 0
    if isinstance(module, nn.MaxPool1d):
        size = module.kernel_size
        kernel = size if isinstance(size, int) else size[0]
        return (call.out_numel * _bits_per_index(kernel) if gradient_in else 0), 0
    if isinstance(module, nn.LSTM):
        return (_lstm_store(module, call, weight_trains) * act if gradient_out else 0), 0
    return 0, 0


def estimate_device_memory(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, int],
    trainable: Collection[str],
    bits: BitWidths = FP32,
    optimizer_states: int = 1,
    calls: list[LayerCall] | None = None,
) -> MemoryEstimate:
    """SRAM of one training step of ``model`` on a ``(B, C, T)`` batch, on a training engine.

    Parameters are as for ``fedhar.device.memory.estimate_training_memory``.
    """
    check_trainable(model, trainable)
    if optimizer_states not in (0, 1, 2):
        raise ValueError(
            f"optimizer_states must be 0 (SGD), 1 (momentum) or 2 (Adam), got {optimizer_states}"
        )
    calls = trace_layers(model, input_shape) if calls is None else calls
    saved_bits, upstream, working = 0, False, 0  # saved: per batch of `batch_size`
    for call in calls:
        own = {f"{call.name}.{n}" for n, _ in call.module.named_parameters(recurse=False)}
        trained = own & set(trainable)
        weight = any(n.rsplit(".", 1)[-1].startswith("weight") for n in trained)
        gradient_out = upstream or bool(trained)
        per_window, per_batch = _saved_bits(call, weight, gradient_out, upstream, bits)
        saved_bits += per_window * batch_size + per_batch
        working = max(working, (call.in_numel + call.out_numel) * bits.activations)
        if gradient_out:
            working = max(working, (call.in_numel + call.out_numel) * bits.gradients)
        upstream = gradient_out
    weights, grads, states = static_bytes(model, trainable, bits, optimizer_states)
    return MemoryEstimate(
        weight_bytes=weights,
        gradient_bytes=grads,
        optimizer_bytes=states,
        saved_activation_bytes=math.ceil(saved_bits / 8),
        working_bytes=math.ceil(working * batch_size / 8),
        input_bytes=math.ceil(batch_size * math.prod(input_shape) * bits.activations / 8),
    )
