"""SRAM and flash accounting for one local training step, derived from layer shapes.

The estimate walks the model's leaf layers in execution order (shapes come from a gradient-free
forward pass on one dummy window) and applies, per layer type, what PyTorch's CPU autograd
saves for backward given which parameters are trainable:

- a layer records backward state only if its input requires grad or it owns a trainable
  parameter; a tensor requires grad once any earlier layer owns a trainable parameter;
- Conv1d saves its input (whichever parameter is trainable); BatchNorm1d saves its input plus
  per-channel mean and inverse std; ReLU saves its output; MaxPool1d saves its input plus int64
  indices; Dropout saves a float mask; Linear saves its input only if its weight is trainable;
- LSTM, oneDNN kernel (PyTorch's default on x86): per layer and direction, the layer input,
  output, final states, initial states and a workspace of gates and states whose size is given
  by ``lstm_workspace``; native kernel (``onednn=False``): per step its gates and states.

Tensors that share storage are counted once, as PyTorch keeps them once. Unlike TinyTL's idealised
accounting, frozen early layers still cost activation memory when a later bias needs their
gradient flow (BatchNorm keeps its full input, not a 1-bit mask).

The peak is the larger of two moments. Forward: at each layer call, what earlier layers saved,
the live input and the call's own output, or for an LSTM its whole training-mode footprint
(oneDNN allocates its workspace even when no gradient will flow). Backward: at each layer,
what the layers up to it saved (backward frees the rest on its way) and the gradients of its
output and input. ``measure_peak_bytes`` measures the same peak with ``torch.profiler``;
``python -m experiments.bench.memory`` compares the two, with both kernels.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import torch
from torch import nn

PAGE_BYTES = 4096  # oneDNN aligns every workspace section to a page
INDEX_BYTES = 8  # MaxPool indices are int64 in PyTorch


@dataclass(frozen=True)
class BitWidths:
    """Storage bits per tensor kind; 32 everywhere is plain fp32 training."""

    weights: int = 32
    activations: int = 32
    gradients: int = 32
    optimizer_state: int = 32


FP32 = BitWidths()  # plain fp32 training, the default everywhere


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes held in SRAM at the peak of one training step, by kind."""

    weight_bytes: int  # all parameters and buffers
    gradient_bytes: int  # trainable parameters only
    optimizer_bytes: int  # optimizer state of trainable parameters
    saved_activation_bytes: int  # tensors kept for backward (input batch excluded)
    working_bytes: int  # largest input + output pair of one layer
    input_bytes: int  # the input batch
    forward_peak_bytes: int = 0  # activations live at the forward pass's busiest layer call

    @property
    def comparable_bytes(self) -> int:
        """The terms a saved-tensor measurement can see (no working buffers, no input)."""
        return (
            self.weight_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.saved_activation_bytes
        )

    @property
    def peak_bytes(self) -> int:
        """Peak SRAM: the static terms and the input batch, plus the larger of the forward
        pass's busiest moment and the backward pass's (every saved tensor and one layer's
        working buffers)."""
        static = self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.input_bytes
        backward = self.saved_activation_bytes + self.working_bytes
        return static + max(backward, self.forward_peak_bytes)


@dataclass(frozen=True)
class LayerCall:
    """One leaf layer call seen while tracing one window (all numels are per window)."""

    name: str
    module: nn.Module
    in_key: int  # storage identity of the input
    in_numel: int  # storage elements of the input
    in_shape: tuple[int, ...]
    out_key: int
    out_numel: int
    out_shape: tuple[int, ...]


def _nbytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def _good_ld(dim: int) -> int:
    """oneDNN's leading dimension: a multiple of 16 floats, never a multiple of 256."""
    ld = math.ceil(dim / 16) * 16
    return ld + 16 if ld % 256 == 0 else ld


def _pages(nbytes: int) -> int:
    return math.ceil(nbytes / PAGE_BYTES) * PAGE_BYTES


def lstm_workspace(batch: int, steps: int, input_size: int, hidden: int) -> int:
    """fp32 bytes of the oneDNN training workspace of one LSTM layer and direction."""
    states_ld = _good_ld(max(input_size, hidden))
    gates = _pages(4 * steps * batch * _good_ld(4 * hidden))
    hidden_states = _pages(4 * steps * batch * _good_ld(hidden))
    states = 3 * _pages(4 * 2 * (steps + 1) * batch * states_ld)  # layer, diff-layer, diff-iter
    cell_states = 2 * _pages(4 * 2 * (steps + 1) * batch * hidden)  # cell, diff-cell
    return gates + hidden_states + states + cell_states


def trace_layers(model: nn.Module, input_shape: tuple[int, int]) -> list[LayerCall]:
    """Leaf layer calls, in execution order, for one window of shape ``(C, T)``."""
    calls: list[LayerCall] = []
    keep: list[object] = []  # hold every tensor so storage addresses are never reused

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        out = output[0] if isinstance(output, tuple) else output
        assert isinstance(out, torch.Tensor)
        x = inputs[0]
        keep.extend([x, out])
        calls.append(
            LayerCall(
                names[module],
                module,
                x.untyped_storage().data_ptr(),
                x.untyped_storage().nbytes() // x.element_size(),
                tuple(x.shape),
                out.untyped_storage().data_ptr(),
                out.untyped_storage().nbytes() // out.element_size(),
                tuple(out.shape),
            )
        )

    clone = copy.deepcopy(model).train()  # training-mode layers (dropout), original untouched
    names = {m: n for n, m in clone.named_modules() if not list(m.children())}
    for module in names:
        module.register_forward_hook(hook)
    with torch.no_grad():
        clone(torch.zeros(1, *input_shape))  # (1, C, T)
    return calls


def _lstm_saved(module: nn.LSTM, batch: int, shape: tuple[int, ...], bits: int) -> int:
    """Bytes an LSTM keeps for backward, for input ``shape`` ``(1, T, C)`` at ``batch``."""
    steps, directions, hidden = shape[1], 1 + int(module.bidirectional), module.hidden_size
    per_state = module.num_layers * directions * batch * hidden
    total = 2 * per_state + batch * steps * shape[2]  # h0, c0 and the contiguous input copy
    ws = 0
    for layer in range(module.num_layers):
        layer_in = shape[2] if layer == 0 else hidden * directions
        if layer > 0 and directions == 2:
            total += batch * steps * layer_in  # concatenated directions feed the next layer
        total += directions * (batch * steps * hidden + 2 * batch * hidden)  # output, hy, cy
        ws += directions * lstm_workspace(batch, steps, layer_in, hidden)
    return _nbytes(total, bits) + math.ceil(ws * bits / 32)


def _lstm_saved_native(
    module: nn.LSTM, batch: int, shape: tuple[int, ...], bits: int, weights_train: bool
) -> int:
    """Bytes PyTorch's native (non-oneDNN) LSTM keeps for backward: per step, layer and
    direction six hidden-sized tensors (gates and cell states), and, when its weights train,
    each layer's input and previous hidden state. Matches ``saved_tensors_hooks`` exactly on
    the shapes in the tests."""
    steps, directions, hidden = shape[1], 1 + int(module.bidirectional), module.hidden_size
    per_step = 6 * hidden * directions * module.num_layers
    if weights_train:
        inputs = [shape[2], *[hidden * directions] * (module.num_layers - 1)]
        per_step += sum(directions * (size + hidden) for size in inputs)
    return _nbytes(batch * steps * per_step, bits)


def _lstm_forward_peak(
    module: nn.LSTM,
    batch: int,
    shape: tuple[int, ...],
    bits: int,
    onednn: bool,
    records: bool,
    weights_train: bool,
) -> int:
    """Bytes an LSTM call holds at its busiest moment in a training-mode forward pass, its
    saved tensors (when it ``records`` for backward) and output included.

    oneDNN allocates its training workspace in training mode whether or not a gradient will
    flow; when none will, it frees each layer's on the way. Both kernels add scratch for the
    gates of all steps. Fitted to ``torch.profiler`` measurements of single LSTMs (within a
    few percent for one layer, about 15% low for two bidirectional layers).
    """
    steps, directions, hidden = shape[1], 1 + int(module.bidirectional), module.hidden_size
    unit = _nbytes(batch * steps * hidden, bits)  # one layer's output, one direction
    layers = module.num_layers
    if onednn:
        saved = _lstm_saved(module, batch, shape, bits)
        scratch = 5 * unit + (directions - 1) * directions * unit  # gates; concatenated output
        if records:
            return saved + scratch
        return saved // (layers * directions) + scratch + (layers * directions - 1) * unit
    if records:
        saved = _lstm_saved_native(module, batch, shape, bits, weights_train)
        return saved + directions * unit + (2 + 2 * directions) * unit  # output; gate scratch
    return (2 + 4 * directions + directions * (layers - 1)) * unit


def _optimizer_for(params: list[nn.Parameter], optimizer_states: int) -> torch.optim.Optimizer:
    """Plain SGD (0 states), SGD with momentum (1) or Adam (2)."""
    if optimizer_states == 0:
        return torch.optim.SGD(params, lr=0.01)
    if optimizer_states == 1:
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)
    return torch.optim.Adam(params, lr=0.001)


def check_trainable(model: nn.Module, trainable: Collection[str]) -> None:
    """Raise ValueError naming any trainable entry that is not a parameter of ``model``."""
    unknown = sorted(set(trainable) - {n for n, _ in model.named_parameters()})
    if unknown:
        raise ValueError(
            f"not parameters of the model: {unknown}; use names from model.named_parameters()"
        )


def static_bytes(
    model: nn.Module, trainable: Collection[str], bits: BitWidths, optimizer_states: int
) -> tuple[int, int, int]:
    """Weight (parameters and buffers), gradient and optimizer-state bytes."""
    weights = sum(_nbytes(p.numel(), bits.weights) for p in model.parameters())
    for buffer in model.buffers():
        buffer_bits = bits.weights if buffer.is_floating_point() else 8 * buffer.element_size()
        weights += _nbytes(buffer.numel(), buffer_bits)
    n_train = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    return (
        weights,
        _nbytes(n_train, bits.gradients),
        _nbytes(n_train * optimizer_states, bits.optimizer_state),
    )


def estimate_training_memory(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, int],
    trainable: Collection[str],
    bits: BitWidths = FP32,
    optimizer_states: int = 1,
    calls: list[LayerCall] | None = None,
    onednn: bool = True,
) -> MemoryEstimate:
    """Analytic SRAM for one training step of ``model`` on a ``(B, C, T)`` batch.

    Parameters
    ----------
    model : nn.Module
        A model following the fedhar model contract.
    batch_size : int
        Windows per step, B.
    input_shape : tuple of int
        One window's ``(C, T)``.
    trainable : collection of str
        Names (from ``named_parameters``) that receive gradients.
    bits : BitWidths
        Storage bits per tensor kind.
    optimizer_states : int
        State tensors per parameter: 0 plain SGD, 1 SGD momentum, 2 Adam.
    calls : list of LayerCall, optional
        A cached ``trace_layers(model, input_shape)``, to skip re-tracing.
    onednn : bool
        The LSTM kernel: oneDNN's (PyTorch's default on x86) or PyTorch's native one.
    """
    check_trainable(model, trainable)
    if optimizer_states not in (0, 1, 2):
        raise ValueError(
            f"optimizer_states must be 0 (SGD), 1 (momentum) or 2 (Adam), got {optimizer_states}"
        )
    B, act = batch_size, bits.activations
    calls = trace_layers(model, input_shape) if calls is None else calls
    input_key = calls[0].in_key
    saved: dict[int, int] = {}  # storage -> elements, deduplicated like PyTorch's storages
    extra_bytes = 0  # tensors that are never shared: statistics, indices, masks, LSTM state
    grad_keys: set[int] = set()
    produced: set[int] = set()
    any_grad = False
    forward_peak = backward_peak = 0

    def held() -> int:  # saved so far, the input batch (its own term) left out
        return _nbytes(sum(n for k, n in saved.items() if k != input_key), act) + extra_bytes

    for call in calls:
        module = call.module
        in_grad = call.in_key in grad_keys if call.in_key in produced else any_grad
        owned = {f"{call.name}.{n}" for n, _ in module.named_parameters(recurse=False)}
        weight_trains = f"{call.name}.weight" in trainable
        produced.add(call.out_key)
        records = in_grad or bool(owned & set(trainable))
        live_input = 0 if call.in_key in saved or call.in_key == input_key else call.in_numel * B
        lstm_weights = any(
            n.rsplit(".", 1)[-1].startswith("weight") for n in owned & set(trainable)
        )
        if isinstance(module, nn.LSTM):
            own = _lstm_forward_peak(module, B, call.in_shape, act, onednn, records, lstm_weights)
        else:
            own = _nbytes(call.out_numel * B, act)
        forward_peak = max(forward_peak, held() + _nbytes(live_input, act) + own)
        if not records:
            continue
        grad_keys.add(call.out_key)
        any_grad = True
        if isinstance(module, nn.Conv1d | nn.BatchNorm1d | nn.MaxPool1d) or (
            isinstance(module, nn.Linear) and weight_trains
        ):
            saved.setdefault(call.in_key, call.in_numel * B)
        if isinstance(module, nn.ReLU):
            saved.setdefault(call.out_key, call.out_numel * B)
        if isinstance(module, nn.BatchNorm1d):
            extra_bytes += _nbytes(2 * module.num_features, act)  # mean and inverse std
        if isinstance(module, nn.MaxPool1d):
            extra_bytes += math.prod(call.out_shape) * B * INDEX_BYTES
        if isinstance(module, nn.Dropout):
            extra_bytes += _nbytes(math.prod(call.in_shape) * B, act)
        if isinstance(module, nn.LSTM) and onednn:
            extra_bytes += _lstm_saved(module, B, call.in_shape, act)
        elif isinstance(module, nn.LSTM):
            extra_bytes += _lstm_saved_native(module, B, call.in_shape, act, lstm_weights)
        # backward frees each layer's saved tensors once past it: at this layer, what the
        # layers up to it saved, plus the gradients of its output and (if needed) its input
        gradients = call.out_numel * B + (call.in_numel * B if in_grad else 0)
        backward_peak = max(backward_peak, held() + _nbytes(gradients, act))
    saved_bytes = held()
    weights, grads, states = static_bytes(model, trainable, bits, optimizer_states)
    return MemoryEstimate(
        weight_bytes=weights,
        gradient_bytes=grads,
        optimizer_bytes=states,
        saved_activation_bytes=saved_bytes,
        working_bytes=backward_peak - saved_bytes,
        input_bytes=_nbytes(B * math.prod(input_shape), act),
        forward_peak_bytes=forward_peak,
    )


def _training_copy(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, int],
    trainable: Collection[str],
    optimizer_states: int,
    seed: int,
) -> tuple[nn.Module, list[nn.Parameter], torch.optim.Optimizer, torch.Tensor, torch.Generator]:
    """A training-mode copy of ``model`` with only ``trainable`` requiring grad, its
    optimizer, a random ``(B, C, T)`` batch and the generator that drew it."""
    check_trainable(model, trainable)
    clone = copy.deepcopy(model).train()
    for name, param in clone.named_parameters():
        param.requires_grad_(name in trainable)
    params = [p for p in clone.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_shape, generator=gen)
    return clone, params, _optimizer_for(params, optimizer_states), x, gen


def _optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's state tensors (momentum, Adam moments), step counters left out."""
    return [
        value
        for state in optimizer.state.values()
        for key, value in state.items()
        if key != "step" and isinstance(value, torch.Tensor)
    ]


@contextlib.contextmanager
def kernels(onednn: bool) -> Iterator[None]:
    """Run PyTorch with oneDNN's kernels (its default on x86) or its native ones."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration")  # no Intel GPU here
        with torch.backends.mkldnn.flags(enabled=onednn):
            yield


def measure_training_memory(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, int],
    trainable: Collection[str],
    optimizer_states: int = 1,
    seed: int = 0,
    onednn: bool = True,
) -> MemoryEstimate:
    """Measured fp32 bytes of one real training step, for checking the estimate.

    Counts the tensors autograd saves for backward (``saved_tensors_hooks``, one count per
    storage, parameters, buffers and the input batch excluded), plus parameter and buffer,
    gradient and optimizer-state bytes. Runs on a copy, so ``model`` is left untouched. The
    working-buffer term is not observable this way and is reported as 0. ``onednn=False``
    runs the step on PyTorch's native kernels.
    """
    clone, params, optimizer, x, gen = _training_copy(
        model, batch_size, input_shape, trainable, optimizer_states, seed
    )
    kept = [*clone.parameters(), *clone.buffers(), x]
    persistent = {t.untyped_storage().data_ptr() for t in kept}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in persistent:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with kernels(onednn):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = clone(x)  # (B, K)
        target = torch.randint(0, logits.shape[1], (batch_size,), generator=gen)
        nn.functional.cross_entropy(logits, target).backward()
        optimizer.step()
    weights = sum(t.numel() * t.element_size() for t in [*clone.parameters(), *clone.buffers()])
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    states = sum(v.numel() * v.element_size() for v in _optimizer_state(optimizer))
    return MemoryEstimate(
        weight_bytes=weights,
        gradient_bytes=grads,
        optimizer_bytes=states,
        saved_activation_bytes=sum(saved.values()),
        working_bytes=0,
        input_bytes=x.numel() * x.element_size(),
    )


def measure_peak_bytes(
    model: nn.Module,
    batch_size: int,
    input_shape: tuple[int, int],
    trainable: Collection[str],
    optimizer_states: int = 1,
    onednn: bool = True,
    seed: int = 0,
) -> int:
    """The profiler's peak of one real fp32 training step: bytes held at its busiest moment.

    Runs two steps on a copy of ``model`` and profiles the second, when gradients and optimizer
    state are resident as in every later step, with ``torch.profiler``'s allocation events.
    The peak is the resident bytes (parameters, buffers, gradients, optimizer state, the input
    batch) plus the highest running total of the step's own allocations, forward transients,
    saved tensors, kernel workspaces and backward buffers alike. ``onednn=False`` runs the step
    on PyTorch's native kernels.
    """
    clone, params, optimizer, x, gen = _training_copy(
        model, batch_size, input_shape, trainable, optimizer_states, seed
    )
    with torch.no_grad():
        classes = int(clone(x[:1]).shape[1])
    target = torch.randint(0, classes, (batch_size,), generator=gen)

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(clone(x), target).backward()
        optimizer.step()

    activities = [torch.profiler.ProfilerActivity.CPU]
    with kernels(onednn):
        step()
        with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
            step()
    events = profiler.profiler.kineto_results.events()  # type: ignore[union-attr]
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    running = highest = 0
    for _, nbytes in allocations:
        running += nbytes
        highest = max(highest, running)
    resident = [*clone.parameters(), *clone.buffers(), x]
    resident += [p.grad for p in params if p.grad is not None]
    resident += _optimizer_state(optimizer)
    return sum(t.numel() * t.element_size() for t in resident) + highest


def flash_bytes(model: nn.Module, weight_bits: int = 32) -> int:
    """Flash needed to store the model: parameters and float buffers at ``weight_bits``."""
    numel = sum(p.numel() for p in model.parameters())
    numel += sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return _nbytes(numel, weight_bits)
