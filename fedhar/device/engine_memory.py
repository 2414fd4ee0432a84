"""SRAM of one training step as an on-device training engine stores it (the ``device`` model).

Unlike ``fedhar.device.memory`` (what PyTorch on this host saves), this counts what a
tiny-training engine keeps (Lin et al. 2022, "On-Device Training Under 256KB Memory"):

- parameters at the weight bits; gradients and optimizer state for trained tensors only;
- saved activations at the activation bits, and only what backward needs: a Conv1d or Linear
  keeps its input when its weight trains; BatchNorm keeps its normalized input when its weight
  trains or gradient flows past it, and its fp32 inverse std for the latter; ReLU and Dropout
  keep a 1-bit mask and a max-pool the argmax of each output (ceil(log2(kernel)) bits) when
  gradient must pass them; an LSTM keeps, per step and direction, its four gate activations and
  its cell state, plus its hidden states and its input when its weights train;
- the largest working buffers, an upper bound: a layer's input and output in the forward pass,
  or its output gradient and (when gradient flows on) input gradient in the backward pass,
  element-wise layers in place;
- the input batch at the activation bits, once (a first layer that keeps its input keeps the
  batch buffer).

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


def _bytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def _lstm_store(module: nn.LSTM, call: LayerCall, batch: int, trains: bool, act: int) -> int:
    """Bytes of the BPTT store of one LSTM call: per layer and direction the gates and the cell
    states; with trained weights also the hidden states (deeper layers' inputs, and dW_hh;
    they could be recomputed as o * tanh(c)) and the first layer's input (dW_ih)."""
    _, steps, features = call.in_shape  # (1, T, F), batch first
    directions, h = 1 + int(module.bidirectional), module.hidden_size
    per_direction = _bytes(batch * steps * 4 * h, act) + _bytes(batch * steps * h, act)
    if trains:
        per_direction += _bytes(batch * steps * h, act)
    store = module.num_layers * directions * per_direction
    return store + (_bytes(batch * steps * features, act) if trains else 0)


def _saved_bytes(call: LayerCall, batch: int, weight_trains: bool, gradient_out: bool,
                 gradient_in: bool, bits: BitWidths) -> int:  # fmt: skip
    """Bytes a call keeps for backward, tensor by tensor."""
    module, act = call.module, bits.activations
    if isinstance(module, nn.Conv1d | nn.Linear):
        return _bytes(call.in_numel * batch, act) if weight_trains else 0
    if isinstance(module, nn.BatchNorm1d):
        # dbeta is the sum of the output gradient; dgamma needs the normalized input, and the
        # input gradient needs it and the inverse std
        normalized = _bytes(call.in_numel * batch, act) if weight_trains or gradient_in else 0
        return normalized + (module.num_features * STATISTIC_BITS // 8 if gradient_in else 0)
    if isinstance(module, nn.ReLU) or (isinstance(module, nn.Dropout) and module.p > 0):
        return _bytes(call.out_numel * batch, 1) if gradient_in else 0
    if isinstance(module, nn.MaxPool1d):
        size = module.kernel_size
        kernel = size if isinstance(size, int) else size[0]
        return _bytes(call.out_numel * batch, _bits_per_index(kernel)) if gradient_in else 0
    if isinstance(module, nn.LSTM):
        return _lstm_store(module, call, batch, weight_trains, act) if gradient_out else 0
    return 0


IN_PLACE = (nn.ReLU, nn.Dropout, nn.Identity, nn.BatchNorm1d)  # element-wise: output over input


def _working_bits(call: LayerCall, gradient_out: bool, gradient_in: bool, bits: BitWidths) -> int:
    """Bits (per window) of a call's live buffers: its input and output in the forward pass;
    its output gradient and, when gradient flows on, its input gradient in the backward pass."""
    in_place = isinstance(call.module, IN_PLACE)
    forward = (0 if in_place else call.in_numel) + call.out_numel
    backward = 0
    if gradient_out:
        backward = call.out_numel + (call.in_numel if gradient_in and not in_place else 0)
    return max(forward * bits.activations, backward * bits.gradients)


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
    batch, input_key = batch_size, calls[0].in_key
    saved, upstream, working, input_saved = 0, False, 0, False
    for call in calls:
        own = {f"{call.name}.{n}" for n, _ in call.module.named_parameters(recurse=False)}
        trained = own & set(trainable)
        weight = any(n.rsplit(".", 1)[-1].startswith("weight") for n in trained)
        gradient_out = upstream or bool(trained)
        layer = _saved_bytes(call, batch, weight, gradient_out, upstream, bits)
        saved += layer
        input_saved |= (
            layer > 0
            and call.in_key == input_key
            and isinstance(call.module, nn.Conv1d | nn.Linear)
        )
        working = max(working, _working_bits(call, gradient_out, upstream, bits))
        upstream = gradient_out
    weights, grads, states = static_bytes(model, trainable, bits, optimizer_states)
    batch_bytes = _bytes(batch * math.prod(input_shape), bits.activations)
    return MemoryEstimate(
        weight_bytes=weights,
        gradient_bytes=grads,
        optimizer_bytes=states,
        saved_activation_bytes=saved,
        working_bytes=math.ceil(working * batch / 8),
        input_bytes=0 if input_saved else batch_bytes,  # a kept first input is the batch buffer
    )
