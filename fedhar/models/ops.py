"""Operations of a forward pass by kind: MACs and the non-MAC work a device also pays for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import nn

OP_KINDS = ("macs", "compares", "elementwise", "nonlinear", "requantize")


@dataclass
class OpCounts:
    """Operations of some forward calls, by kind."""

    macs: int = 0  # multiply-accumulates of Conv1d, Linear and LSTM
    compares: int = 0  # ReLU and max-pool comparisons
    elementwise: int = 0  # BatchNorm scale-and-shift, LSTM cell products and sums
    nonlinear: int = 0  # sigmoid and tanh evaluations (LSTM gates and cell)
    requantize: int = 0  # outputs of quantized layers rescaled onto their integer grid

    def add(self, other: OpCounts) -> None:
        """Add ``other`` in place."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def scaled(self, factor: float) -> OpCounts:
        """These counts times ``factor``, rounded (e.g. per window from a run's totals)."""
        return OpCounts(*(round(getattr(self, f.name) * factor) for f in fields(self)))


def layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> int:
    """Multiply-accumulates of one leaf layer call (biases and activations not counted)."""
    if isinstance(module, nn.Conv1d):
        assert isinstance(output, torch.Tensor)
        per_output = module.in_channels // module.groups * module.kernel_size[0]
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return inputs[0].numel() // module.in_features * module.in_features * module.out_features
    if isinstance(module, nn.LSTM):
        steps, h, directions = _lstm_steps(module, inputs[0])
        macs = 0
        for layer in range(module.num_layers):
            layer_in = module.input_size if layer == 0 else h * directions
            macs += steps * directions * 4 * (layer_in * h + h * h)
        return macs
    return 0


def _lstm_steps(module: nn.LSTM, x: torch.Tensor) -> tuple[int, int, int]:
    """(batch * time steps, hidden size, directions) of one LSTM call on batch-first ``x``."""
    return x.shape[0] * x.shape[1], module.hidden_size, 2 if module.bidirectional else 1


def _quantized_output(module: nn.Module) -> bool:
    observer = getattr(module, "output_observer", None)
    return observer is not None and observer.bits < 32


def layer_ops(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> OpCounts:
    """Operations of one leaf layer call."""
    ops = OpCounts(macs=layer_macs(module, inputs, output))
    out = output[0] if isinstance(output, tuple) else output
    assert isinstance(out, torch.Tensor)
    if isinstance(module, nn.ReLU):
        ops.compares = out.numel()
    elif isinstance(module, nn.MaxPool1d):
        size = module.kernel_size
        kernel = size if isinstance(size, int) else size[0]
        ops.compares = out.numel() * (kernel - 1)
    elif isinstance(module, nn.BatchNorm1d):
        ops.elementwise = 2 * out.numel()
    elif isinstance(module, nn.LSTM):
        steps, h, directions = _lstm_steps(module, inputs[0])
        cells = steps * directions * module.num_layers * h
        ops.nonlinear = 5 * cells  # three sigmoid gates, the tanh candidate, tanh of the cell
        ops.elementwise = 4 * cells  # c = f * c + i * g, h = o * tanh(c)
    if _quantized_output(module):
        ops.requantize = out.numel()
    return ops


@contextmanager
def counting(modules: Iterable[nn.Module], counts: OpCounts) -> Iterator[OpCounts]:
    """Add the operations of every call of ``modules`` (leaf layers) to ``counts``."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        counts.add(layer_ops(module, inputs, output))

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def dummy_forward(model: nn.Module, in_channels: int, window_length: int) -> None:
    """One window of zeros through ``model`` in eval mode without gradients (for hooks that
    trace shapes); the model's mode is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, window_length))
    finally:
        model.train(was_training)


def leaf_layers(model: nn.Module) -> list[nn.Module]:
    """Modules whose calls ``layer_ops`` counts: every module but containers and observers."""
    counted = (nn.Conv1d, nn.Linear, nn.LSTM, nn.ReLU, nn.MaxPool1d, nn.BatchNorm1d)
    return [m for m in model.modules() if isinstance(m, counted)]
