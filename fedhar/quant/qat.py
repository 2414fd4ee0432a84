"""Quantization-aware training: fake-quantized Conv1d, Linear and LSTM with calibrated observers.

Weights are fake-quantized symmetrically per output channel (each LSTM gate row is a channel),
activations affinely per tensor, with a straight-through estimator for the gradients.
`prepare_qat` returns a copy whose `state_dict()` has exactly the float model's keys (observer
state is not persistent), so federated code keeps exchanging float-named state dicts.
BatchNorm1d stays in float (folding it into the convolution is a deployment step).

Quantization-aware scaling (QAS) follows Lin et al. 2022, "On-Device Training Under 256KB
Memory": on the device's real quantized graph the weights are integers W_int = W / s_W, so the
integer-domain gradient is G_int = s_W * G and the gradient-to-weight norm ratio is off by
s_W^-2; QAS multiplies G_int by s_W^-2 (biases, stored at scale s_W * s_x, by (s_W * s_x)^-2).
`scale_gradients` replays that integer-domain SGD step in float units.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

SUPPORTED_BITS = (4, 8, 32)  # 32 leaves that tensor in float
SUPPORTED_LAYERS = "Conv1d, Linear, LSTM (BatchNorm1d stays float; parameter-free layers pass)"
_EPS = 1e-12  # smallest scale, so an all-zero channel does not divide by zero


@dataclass(frozen=True)
class QuantConfig:
    """Fake-quantization settings of one device class.

    Attributes
    ----------
    weight_bits, activation_bits : 4, 8, or 32 (32 means that tensor is not quantized).
    qas : apply quantization-aware scaling in `scale_gradients` (int8 MCU training needs it).
    observer_momentum : EMA weight of a new batch's min/max; None keeps the running min/max,
        which lets the range widen as fast as a model trained from scratch needs.
    """

    weight_bits: int = 8  # int8 kernels (CMSIS-NN class MCUs)
    activation_bits: int = 8
    qas: bool = True
    observer_momentum: float | None = None  # a slow EMA clips growing logits early in training

    def __post_init__(self) -> None:
        for field in ("weight_bits", "activation_bits"):
            bits = getattr(self, field)
            if bits not in SUPPORTED_BITS:
                raise ValueError(f"{field}={bits} is not supported; use one of {SUPPORTED_BITS}")
        m = self.observer_momentum
        if m is not None and not 0.0 < m <= 1.0:
            raise ValueError(f"observer_momentum={m} must be in (0, 1], or None for min/max")

    @property
    def enabled(self) -> bool:
        """True when any tensor is quantized."""
        return self.weight_bits < 32 or self.activation_bits < 32


class ActivationObserver(nn.Module):
    """Per-tensor affine fake quantizer whose range is observed in training or calibration."""

    min_val: Tensor
    max_val: Tensor
    seen: Tensor

    def __init__(self, bits: int, momentum: float | None) -> None:
        super().__init__()
        self.bits, self.momentum, self.calibrating = bits, momentum, False
        self.register_buffer("min_val", torch.tensor(0.0), persistent=False)
        self.register_buffer("max_val", torch.tensor(0.0), persistent=False)
        self.register_buffer("seen", torch.tensor(False), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits < 32 and (self.training or self.calibrating):
            self.observe(x.detach())
        return self.quantize(x)

    def observe(self, x: Tensor) -> None:
        """Update the running range with one batch."""
        lo, hi = x.min(), x.max()
        if not bool(self.seen) or self.momentum is None:
            first = not bool(self.seen)
            self.min_val.copy_(lo if first else torch.minimum(self.min_val, lo))
            self.max_val.copy_(hi if first else torch.maximum(self.max_val, hi))
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        self.seen.fill_(True)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """Scale (float32) and zero point (int32) covering the observed range and zero."""
        qmax = 2**self.bits - 1
        lo, hi = torch.clamp(self.min_val, max=0.0), torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / qmax, min=_EPS).float()
        zero = torch.clamp(torch.round(-lo / scale), 0, qmax).to(torch.int32)
        return scale, zero

    def quantize(self, x: Tensor) -> Tensor:
        """Fake-quantize with the current range; identity until a range was observed."""
        if self.bits == 32 or not bool(self.seen):
            return x
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 2**self.bits - 1)


def weight_scales(weight: Tensor, bits: int) -> Tensor:
    """Symmetric per-output-channel scales max|w_c| / (2^(bits-1) - 1).  # (C_out,)"""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    return torch.clamp(amax / (2 ** (bits - 1) - 1), min=_EPS).float()


def fake_quantize_weight(weight: Tensor, bits: int) -> Tensor:
    """Fake-quantize a weight per output channel (axis 0) with a straight-through gradient."""
    if bits == 32:
        return weight
    qmax = 2 ** (bits - 1) - 1
    scale = weight_scales(weight, bits)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


class _QuantMixin:
    """Observers and config attached to a float layer whose class was swapped."""

    quant_config: QuantConfig
    input_observer: ActivationObserver
    output_observer: ActivationObserver

    def attach(self, cfg: QuantConfig) -> None:
        self.quant_config = cfg
        self.input_observer = ActivationObserver(cfg.activation_bits, cfg.observer_momentum)
        self.output_observer = ActivationObserver(cfg.activation_bits, cfg.observer_momentum)


class QConv1d(_QuantMixin, nn.Conv1d):
    """Conv1d with fake-quantized input, weight and output."""

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C', T')
        w = fake_quantize_weight(self.weight, self.quant_config.weight_bits)
        y = self._conv_forward(self.input_observer(x), w, self.bias)
        return self.output_observer(y)


class QLinear(_QuantMixin, nn.Linear):
    """Linear with fake-quantized input, weight and output."""

    def forward(self, x: Tensor) -> Tensor:  # (B, F) -> (B, F')
        w = fake_quantize_weight(self.weight, self.quant_config.weight_bits)
        return self.output_observer(nn.functional.linear(self.input_observer(x), w, self.bias))


class QLSTM(_QuantMixin, nn.LSTM):
    """LSTM run functionally with fake-quantized gate rows; input, output and h_n quantized.

    The cell state and the gate nonlinearities stay in float.
    """

    def forward(  # type: ignore[override]
        self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:  # (B, T, F) -> (B, T, D*H), ((L*D, B, H) x 2)
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError("QLSTM expects a batched 3-D tensor; packed sequences are unsupported")
        bits = self.quant_config.weight_bits
        weights: list[Tensor] = [
            fake_quantize_weight(w, bits) if name.startswith("weight") else w
            for name, w in zip(self._flat_weights_names, self._flat_weights, strict=True)
            if w is not None
        ]
        if hx is None:
            batch = x.size(0) if self.batch_first else x.size(1)
            layers = self.num_layers * (2 if self.bidirectional else 1)
            zeros = x.new_zeros(layers, batch, self.hidden_size)
            hx = (zeros, zeros)
        out, h, c = torch._VF.lstm(  # type: ignore[attr-defined]
            self.input_observer(x),
            hx,
            weights,
            self.bias,
            self.num_layers,
            float(self.dropout),
            self.training,
            self.bidirectional,
            self.batch_first,
        )
        out = self.output_observer(out)
        return out, (self.output_observer.quantize(h), c)


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QConv1d,
    nn.Linear: QLinear,
    nn.LSTM: QLSTM,
}
QUANT_LAYERS = (QConv1d, QLinear, QLSTM)


def prepare_qat(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Return a fake-quantized copy of `model`; its state_dict keys equal the float model's.

    Raises ValueError for a layer type with parameters other than Conv1d, Linear, LSTM and
    BatchNorm1d, for an LSTM with projections, and for an already prepared model.
    """
    for name, module in model.named_modules():
        if isinstance(module, QUANT_LAYERS):
            raise ValueError(f"layer {name!r} is already fake-quantized; pass the float model")
        has_params = any(True for _ in module.parameters(recurse=False))
        if has_params and type(module) not in (*_SWAPS, nn.BatchNorm1d):
            raise ValueError(
                f"layer {name!r} of type {type(module).__name__} cannot be quantized; "
                f"supported: {SUPPORTED_LAYERS}"
            )
        if isinstance(module, nn.LSTM) and module.proj_size > 0:
            raise ValueError(f"LSTM {name!r} has proj_size > 0; only plain LSTMs are supported")
    qat = copy.deepcopy(model)
    if not cfg.enabled:
        return qat
    for module in list(qat.modules()):
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
            module.attach(cfg)  # type: ignore[operator]
    return qat


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QConv1d | QLinear | QLSTM]]:
    """Yield (name, layer) for every fake-quantized layer of a prepared model."""
    for name, module in model.named_modules():
        if isinstance(module, QUANT_LAYERS):
            yield name, module


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Observe activation ranges over `batches` in eval mode; returns the number of batches.

    BatchNorm statistics and dropout are untouched (the model runs in eval mode).
    """
    observers = [m for m in model.modules() if isinstance(m, ActivationObserver)]
    was_training = model.training
    model.eval()
    for obs in observers:
        obs.calibrating = True
    count = 0
    try:
        for x in batches:
            model(x)
            count += 1
    finally:
        for obs in observers:
            obs.calibrating = False
        model.train(was_training)
    return count


def _activation_scale(observer: ActivationObserver) -> Tensor:
    """Scale of an activation tensor on the integer graph (1 when it stays float)."""
    if observer.bits == 32 or not bool(observer.seen):
        return torch.tensor(1.0)
    return observer.qparams()[0]


def integer_scales(layer: nn.Module) -> list[tuple[nn.Parameter, Tensor]]:
    """Each parameter with its per-channel scale on the device's real quantized graph.

    Weights have scale s_W (per row); biases are int32 at s_W * s_x, where s_x is the scale of
    the tensor multiplying that weight (the layer input, or for LSTM hidden-to-hidden weights and
    deeper layers, the quantized layer output).
    """
    if not isinstance(layer, QUANT_LAYERS):
        raise ValueError(f"{type(layer).__name__} is not a fake-quantized layer")
    bits = layer.quant_config.weight_bits
    s_in, s_out = _activation_scale(layer.input_observer), _activation_scale(layer.output_observer)
    params = dict(layer.named_parameters(recurse=False))
    pairs = []
    for name, param in params.items():
        if not name.startswith("weight"):
            continue
        s_w = weight_scales(param, bits)
        pairs.append((param, s_w))
        bias = params.get(name.replace("weight", "bias", 1))
        if bias is not None:
            s_x = s_in if name in ("weight", "weight_ih_l0", "weight_ih_l0_reverse") else s_out
            pairs.append((bias, s_w * s_x))
    return pairs


@torch.no_grad()
def scale_gradients(model: nn.Module) -> None:
    """Turn STE gradients into the float-unit step of SGD on the real quantized graph.

    Call between `backward()` and `optimizer.step()`. Per channel with integer scale s:
    the device's gradient is G_int = s * G; with `qas` it becomes G_int * s^-2 (Lin et al. 2022,
    eq. for QAS), without it stays G_int; the integer step maps back to float units times s.
    So QAS restores the float gradient G, and its absence shrinks it to s^2 * G.
    """
    for _, layer in quantized_layers(model):
        if layer.quant_config.weight_bits == 32:
            continue
        for param, scale in integer_scales(layer):
            if param.grad is None:
                continue
            s = scale.reshape(-1, *([1] * (param.dim() - 1)))
            g_int = s * param.grad
            if layer.quant_config.qas:
                g_int = g_int / s**2
            param.grad.copy_(s * g_int)


def _quantize_input(layer: QConv1d | QLinear, x: Tensor) -> Tensor:
    """Integer input minus its zero point, as the kernel consumes it.  # int64"""
    scale, zero = layer.input_observer.qparams()
    q = torch.round(x * (1.0 / scale)) + zero
    return torch.clamp(q, 0, 2**layer.input_observer.bits - 1).long() - zero.long()


@torch.no_grad()
def integer_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """Integer-arithmetic reference of a calibrated QConv1d or QLinear, dequantized.

    Integer input and weights, int64-checked int32 accumulation with an int32 bias at scale
    s_x * s_W, then requantization to the output observer's grid. Matches the fake-quant
    forward to within one output step.
    """
    if not isinstance(layer, QConv1d | QLinear):
        name = type(layer).__name__
        raise ValueError(f"integer reference covers QConv1d and QLinear, not {name}")
    cfg = layer.quant_config
    if max(cfg.weight_bits, cfg.activation_bits) > 8:
        raise ValueError("integer reference needs weight_bits and activation_bits of 4 or 8")
    if not (bool(layer.input_observer.seen) and bool(layer.output_observer.seen)):
        raise ValueError("layer is not calibrated; run calibrate(model, batches) first")
    s_x, _ = layer.input_observer.qparams()
    s_y, z_y = layer.output_observer.qparams()
    s_w = weight_scales(layer.weight, cfg.weight_bits)
    w_q = torch.round(layer.weight * (1.0 / s_w).reshape(-1, *[1] * (layer.weight.dim() - 1)))
    xi, wi = _quantize_input(layer, x), w_q.long()
    if isinstance(layer, QLinear):
        acc = xi @ wi.T  # (B, F')
    else:
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("integer reference needs numeric zero padding on Conv1d")
        pad, (k,), (stride,), (dil,) = (
            layer.padding[0],
            layer.kernel_size,
            layer.stride,
            layer.dilation,
        )
        cols = nn.functional.pad(xi, (pad, pad)).unfold(2, dil * (k - 1) + 1, stride)[..., ::dil]
        g = layer.groups
        b, c, length, _ = cols.shape  # (B, C, L, K)
        cols = cols.reshape(b, g, c // g, length, k)
        wg = wi.reshape(g, -1, c // g, k)
        acc = torch.einsum("bgclk,gock->bgol", cols, wg).reshape(b, -1, length)  # (B, C', L)
    channel_shape = (-1,) if isinstance(layer, QLinear) else (-1, 1)
    if layer.bias is not None:
        acc = acc + torch.round(layer.bias / (s_x * s_w)).long().reshape(channel_shape)
    if acc.abs().max() >= 2**31:
        raise OverflowError("int32 accumulator overflow; reduce the layer's fan-in")
    multiplier = (s_x * s_w / s_y).double().reshape(channel_shape)
    y_q = torch.clamp(torch.round(acc.double() * multiplier) + z_y, 0, 2**cfg.activation_bits - 1)
    return ((y_q - z_y) * s_y).float()
