"""A training step that stores for backward exactly what ``fedhar.device.engine_memory`` counts.

Each layer of a copy of the model runs as a custom autograd function that saves its
activations at the device's activation bits (8 or 4: affine per-tensor codes, two 4-bit codes
per byte; 32: fp32), masks and max-pool choices as packed bits, and the LSTM's gates and cell
states (hidden states and input only when its weights train), and that computes its gradients
from those. ``measure_device_step`` counts the bytes saved with ``saved_tensors_hooks`` and
returns the gradients, which match the float step within quantization error.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx
from torch.nn import functional as F
from torch.nn import grad as conv_grad

from fedhar.device.memory import check_trainable


class Stored:
    """A tensor kept for backward at ``bits``: affine codes (8 or 4 bits) or the fp32 tensor."""

    def __init__(self, x: Tensor, bits: int) -> None:
        self.shape, self.bits = x.shape, bits
        if bits >= 32:
            self.codes, self.scale, self.low = x.detach().clone(), 1.0, 0.0
            return
        levels = 2**bits - 1
        low, high = float(x.min()), float(x.max())
        self.scale, self.low = max(high - low, 1e-12) / levels, low
        codes = torch.round((x.detach() - low) / self.scale).clamp(0, levels).to(torch.uint8)
        self.codes = _pack_nibbles(codes.flatten()) if bits == 4 else codes

    def tensors(self) -> tuple[Tensor]:
        return (self.codes,)

    def restore(self, codes: Tensor) -> Tensor:
        if self.bits >= 32:
            return codes
        if self.bits == 4:
            codes = _unpack_nibbles(codes, math.prod(self.shape)).reshape(self.shape)
        return codes.float() * self.scale + self.low


def _pack_nibbles(codes: Tensor) -> Tensor:
    codes = F.pad(codes, (0, codes.numel() % 2))
    return codes[0::2] | (codes[1::2] << 4)


def _unpack_nibbles(packed: Tensor, count: int) -> Tensor:
    return torch.stack([packed & 15, packed >> 4], dim=1).flatten()[:count]


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor as 8 flags per byte.  # (ceil(N / 8),) uint8"""
    flat = F.pad(mask.flatten().to(torch.uint8), (0, (-mask.numel()) % 8)).reshape(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[: math.prod(shape)].reshape(shape).bool()


class _Conv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                layer: nn.Conv1d, bits: int) -> Tensor:  # fmt: skip
        ctx.layer, ctx.x_shape = layer, x.shape  # type: ignore[attr-defined]
        stored = Stored(x, bits) if ctx.needs_input_grad[1] else None  # type: ignore[attr-defined]
        ctx.stored = stored  # type: ignore[attr-defined]
        ctx.save_for_backward(weight, *(stored.tensors() if stored else ()))
        return layer._conv_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        weight, *codes = ctx.saved_tensors
        layer = ctx.layer
        args = (layer.stride, layer.padding, layer.dilation, layer.groups)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = conv_grad.conv1d_input(ctx.x_shape, weight, dy, *args)
        if ctx.needs_input_grad[1]:
            x = ctx.stored.restore(codes[0])
            dw = conv_grad.conv1d_weight(x, weight.shape, dy, *args)
        if ctx.needs_input_grad[2]:
            db = dy.sum(dim=(0, 2))
        return dx, dw, db, None, None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None,
                bits: int) -> Tensor:  # fmt: skip
        stored = Stored(x, bits) if ctx.needs_input_grad[1] else None  # type: ignore[attr-defined]
        ctx.stored = stored  # type: ignore[attr-defined]
        ctx.save_for_backward(weight, *(stored.tensors() if stored else ()))
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        weight, *codes = ctx.saved_tensors
        dx = dy @ weight if ctx.needs_input_grad[0] else None
        dw = db = None
        if ctx.needs_input_grad[1]:
            x = ctx.stored.restore(codes[0])
            dw = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[2]:
            db = dy.reshape(-1, dy.shape[-1]).sum(dim=0)
        return dx, dw, db, None


class _Mask(torch.autograd.Function):
    """ReLU (mask = output > 0) or dropout (mask drawn by ``F.dropout``), as packed bits."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, keep: Tensor, gain: float) -> Tensor:
        ctx.shape, ctx.gain = keep.shape, gain  # type: ignore[attr-defined]
        ctx.save_for_backward(pack_bits(keep))
        return x * keep * gain

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        (packed,) = ctx.saved_tensors
        return dy * unpack_bits(packed, ctx.shape) * ctx.gain, None, None


class _MaxPool2(torch.autograd.Function):
    """Max over pairs of time steps; which of the two won is kept as one bit per output."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        pairs = x[..., : x.shape[-1] // 2 * 2].unflatten(-1, (-1, 2))  # (B, C, T/2, 2)
        y, choice = pairs.max(dim=-1)
        ctx.x_shape, ctx.y_shape = x.shape, y.shape  # type: ignore[attr-defined]
        ctx.save_for_backward(pack_bits(choice.bool()))
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor]:
        (packed,) = ctx.saved_tensors
        second = unpack_bits(packed, ctx.y_shape)
        pairs = torch.stack([dy * ~second, dy * second], dim=-1).flatten(-2)  # (B, C, T')
        return (F.pad(pairs, (0, ctx.x_shape[-1] - pairs.shape[-1])),)


class _BatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm1d on batch statistics. Keeps the normalized input at ``bits``
    when its weight or its input needs a gradient, and the inverse std for the latter."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor, eps: float,
                bits: int) -> Tensor:  # fmt: skip
        mean = x.mean(dim=(0, 2), keepdim=True)
        inv_std = torch.rsqrt(x.var(dim=(0, 2), unbiased=False, keepdim=True) + eps)
        normalized = (x - mean) * inv_std
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        stored = Stored(normalized, bits) if needs[0] or needs[1] else None
        ctx.stored = stored  # type: ignore[attr-defined]
        kept = [inv_std.flatten()] if needs[0] else []
        ctx.save_for_backward(weight, *kept, *(stored.tensors() if stored else ()))
        return normalized * weight[:, None] + bias[:, None]

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        weight, *kept = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dbias = dy.sum(dim=(0, 2)) if needs[2] else None
        if ctx.stored is None:
            return None, None, dbias, None, None
        normalized = ctx.stored.restore(kept[-1])
        dweight = (dy * normalized).sum(dim=(0, 2)) if needs[1] else None
        dx = None
        if needs[0]:
            dn = dy * weight[:, None]
            count = dy.shape[0] * dy.shape[2]
            dx = kept[0][:, None] / count * (
                count * dn - dn.sum(dim=(0, 2), keepdim=True)
                - normalized * (dn * normalized).sum(dim=(0, 2), keepdim=True)
            )  # fmt: skip
        return dx, dweight, dbias, None, None


def _lstm_direction(x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Tensor, reverse: bool
                    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gates (B, T, 4H), cell states (B, T, H), hidden states (B, T, H) of one direction."""
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    h = c = x.new_zeros(x.shape[0], w_hh.shape[1])
    gates, cells, hiddens = [], [], []
    for t in steps:
        i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + bias).chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        gates.append(torch.cat([i, f, g, o], dim=1))
        cells.append(c)
        hiddens.append(h)
    order = slice(None, None, -1) if reverse else slice(None)
    return tuple(torch.stack(s[order], dim=1) for s in (gates, cells, hiddens))  # type: ignore[return-value]


def _lstm_backward(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, gates: Tensor, cells: Tensor, hiddens: Tensor | None,
    dh_out: Tensor, dh_last: Tensor, dc_last: Tensor, reverse: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:  # fmt: skip
    """BPTT of one direction: (dx, dW_ih, dW_hh, dbias); weight gradients need ``hiddens``."""
    steps = list(range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1]))
    hidden = w_hh.shape[1]
    dx = torch.zeros_like(x)
    dw_ih = torch.zeros_like(w_ih) if hiddens is not None else None
    dw_hh = torch.zeros_like(w_hh) if hiddens is not None else None
    dbias = x.new_zeros(4 * hidden)
    dh_next, dc_next = dh_last, dc_last
    for position in range(len(steps) - 1, -1, -1):
        t = steps[position]
        previous = steps[position - 1] if position > 0 else None
        i, f, g, o = gates[:, t].chunk(4, dim=1)
        c_prev = cells[:, previous] if previous is not None else torch.zeros_like(cells[:, t])
        tanh_c = torch.tanh(cells[:, t])
        dh = dh_out[:, t] + dh_next
        dc = dh * o * (1 - tanh_c**2) + dc_next
        dz = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g**2),
                        dh * tanh_c * o * (1 - o)], dim=1)  # fmt: skip
        dx[:, t] = dz @ w_ih
        dh_next, dc_next = dz @ w_hh, dc * f
        dbias += dz.sum(dim=0)
        if hiddens is not None and dw_ih is not None and dw_hh is not None:
            dw_ih += dz.T @ x[:, t]
            if previous is not None:
                dw_hh += dz.T @ hiddens[:, previous]
    return dx, dw_ih, dw_hh, dbias


class _LSTM(torch.autograd.Function):
    """A batch-first, zero-initialized LSTM stack storing the minimal BPTT state."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, layer: nn.LSTM, bits: int, *weights: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        directions = 1 + int(layer.bidirectional)
        trains = any(ctx.needs_input_grad[3 + k] for k in range(len(weights)))  # type: ignore[attr-defined]
        weight_trains = any(
            ctx.needs_input_grad[3 + k]  # type: ignore[attr-defined]
            for k, name in enumerate(layer._flat_weights_names)
            if name.startswith("weight")
        )
        stored: list[Stored] = []
        if weight_trains:
            stored.append(Stored(x, bits))
        h_n, c_n, inputs = [], [], x
        for depth in range(layer.num_layers):
            outputs = []
            for direction in range(directions):
                w_ih, w_hh, b_ih, b_hh = weights[4 * (depth * directions + direction) :][:4]
                gates, cells, hiddens = _lstm_direction(inputs, w_ih, w_hh, b_ih + b_hh,
                                                        direction == 1)  # fmt: skip
                if trains or ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
                    stored += [Stored(gates, bits), Stored(cells, bits)]
                    if weight_trains:
                        stored.append(Stored(hiddens, bits))
                last = 0 if direction == 1 else -1
                h_n.append(hiddens[:, last])
                c_n.append(cells[:, last])
                outputs.append(hiddens)
            inputs = torch.cat(outputs, dim=2)  # (B, T, D*H)
        ctx.layer, ctx.stored, ctx.weight_trains = layer, stored, weight_trains  # type: ignore[attr-defined]
        ctx.x_shape = x.shape  # type: ignore[attr-defined]
        ctx.save_for_backward(*weights, *(t for s in stored for t in s.tensors()))
        return inputs, torch.stack(h_n), torch.stack(c_n)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_hn: Tensor, d_cn: Tensor) -> tuple[Tensor | None, ...]:
        layer: nn.LSTM = ctx.layer
        directions, count = (
            1 + int(layer.bidirectional),
            4 * layer.num_layers * (1 + int(layer.bidirectional)),
        )
        weights, codes = ctx.saved_tensors[:count], list(ctx.saved_tensors[count:])
        restored = [s.restore(c) for s, c in zip(ctx.stored, codes, strict=True)]
        x = restored.pop(0) if ctx.weight_trains else torch.zeros(ctx.x_shape)
        per_direction = 3 if ctx.weight_trains else 2
        grads: list[Tensor | None] = [None] * count
        layer_inputs = [x]
        for depth in range(layer.num_layers - 1):  # deeper layers read the stored hidden states
            states = [restored[(depth * directions + d) * per_direction + 2]
                      for d in range(directions)] if ctx.weight_trains else []  # fmt: skip
            layer_inputs.append(torch.cat(states, dim=2) if states else torch.zeros(0))
        d_inputs: Tensor = d_out
        for depth in range(layer.num_layers - 1, -1, -1):
            inputs = layer_inputs[depth]
            d_x = None
            for direction in range(directions):
                k = depth * directions + direction
                w_ih, w_hh = weights[4 * k], weights[4 * k + 1]
                gates, cells = restored[k * per_direction], restored[k * per_direction + 1]
                hiddens = restored[k * per_direction + 2] if ctx.weight_trains else None
                if inputs.numel() == 0:
                    inputs = torch.zeros(*d_inputs.shape[:2], w_ih.shape[1])
                h = w_hh.shape[1]
                dx, dw_ih, dw_hh, dbias = _lstm_backward(
                    inputs, w_ih, w_hh, gates, cells, hiddens,
                    d_inputs[..., direction * h : (direction + 1) * h], d_hn[k], d_cn[k],
                    direction == 1,
                )  # fmt: skip
                grads[4 * k : 4 * k + 4] = [dw_ih, dw_hh, dbias, dbias]
                d_x = dx if d_x is None else d_x + dx
            assert d_x is not None
            d_inputs = d_x
        trained = [g if ctx.needs_input_grad[3 + k] else None for k, g in enumerate(grads)]
        return (d_inputs if ctx.needs_input_grad[0] else None, None, None, *trained)


class _Reference:
    bits: int


class RefConv1d(_Reference, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return _Conv1d.apply(x, self.weight, self.bias, self, self.bits)  # type: ignore[no-any-return]


class RefLinear(_Reference, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return _Linear.apply(x, self.weight, self.bias, self.bits)  # type: ignore[no-any-return]


class RefReLU(_Reference, nn.ReLU):
    def forward(self, x: Tensor) -> Tensor:
        return _Mask.apply(x, x > 0, 1.0)  # type: ignore[no-any-return]


class RefDropout(_Reference, nn.Dropout):
    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = F.dropout(torch.ones_like(x), self.p, True) > 0
        return _Mask.apply(x, keep, 1.0 / (1 - self.p))  # type: ignore[no-any-return]


class RefMaxPool1d(_Reference, nn.MaxPool1d):
    def forward(self, x: Tensor) -> Tensor:
        return _MaxPool2.apply(x)  # type: ignore[no-any-return]


class RefBatchNorm1d(_Reference, nn.BatchNorm1d):
    def forward(self, x: Tensor) -> Tensor:
        return _BatchNorm.apply(x, self.weight, self.bias, self.eps, self.bits)  # type: ignore[no-any-return]


class RefLSTM(_Reference, nn.LSTM):
    def forward(self, x: Tensor, hx: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # type: ignore[override]
        out, h_n, c_n = _LSTM.apply(x, self, self.bits, *self._flat_weights)
        return out, (h_n, c_n)


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: RefConv1d, nn.Linear: RefLinear, nn.ReLU: RefReLU, nn.Dropout: RefDropout,
    nn.MaxPool1d: RefMaxPool1d, nn.BatchNorm1d: RefBatchNorm1d, nn.LSTM: RefLSTM,
}  # fmt: skip


def _check_supported(module: nn.Module) -> None:
    """Raise for layer variants the reference functions do not implement."""
    problem = None
    if isinstance(module, nn.MaxPool1d) and (
        (module.kernel_size, module.stride) not in ((2, 2), ((2,), (2,)))
        or module.padding not in (0, (0,))
        or module.ceil_mode
        or module.dilation not in (1, (1,))
    ):
        problem = "pools pairs only (kernel 2, stride 2, no padding or ceil_mode)"
    if isinstance(module, nn.LSTM) and (
        not module.batch_first or not module.bias or module.dropout > 0 or module.proj_size
    ):
        problem = "runs batch-first LSTMs with biases, no dropout and no projection"
    if isinstance(module, nn.Conv1d) and module.padding_mode != "zeros":
        problem = "pads convolutions with zeros only"
    if problem is not None:
        raise ValueError(f"the reference step {problem}, not {module}")


def reference_model(model: nn.Module, activation_bits: int) -> nn.Module:
    """A copy of `model` whose layers store activations at `activation_bits` for backward."""
    if activation_bits not in (4, 8, 32):
        raise ValueError(f"activation_bits must be 4, 8 or 32, got {activation_bits}")
    reference = copy.deepcopy(model)
    for module in reference.modules():
        _check_supported(module)
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
            module.bits = activation_bits  # type: ignore[assignment]
    return reference


def measure_device_step(
    model: nn.Module, batch: Tensor, targets: Tensor, trainable: Collection[str],
    activation_bits: int,
) -> tuple[int, dict[str, Tensor]]:  # fmt: skip
    """Bytes the reference step saves for backward, and the gradients of the trained
    parameters (cross-entropy on ``batch`` ``(B, C, T)``)."""
    check_trainable(model, trainable)
    reference = reference_model(model, activation_bits).train()
    for name, param in reference.named_parameters():
        param.requires_grad_(name in trainable)
    persistent = {t.untyped_storage().data_ptr() for t in (*reference.parameters(), batch)}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in persistent:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = reference(batch)  # (B, K); the loss's own saved tensors are not the model's
    F.cross_entropy(logits, targets).backward()
    grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    return sum(saved.values()), grads
