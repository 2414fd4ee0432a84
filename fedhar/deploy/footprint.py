"""What the deployed model occupies: its int8 weights in flash and its buffers in RAM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedhar.deploy.device_model import FLOAT_BITS, DeployedModel
from fedhar.deploy.offload import SAMPLE_BYTES
from fedhar.models.ops import leaf_layers
from fedhar.quant.qat import integer_scales, quantized_layers

ACCUMULATOR_BYTES = 4  # int32 gate pre-activations of a quantized LSTM step
CELL_STATE_BYTES = 2  # int16 cell state, as int8 LSTM kernels keep it
IN_PLACE = (nn.ReLU, nn.Identity, nn.Dropout)  # write over their input


@dataclass(frozen=True)
class Int8Export:
    """The deployed model's weights as a device stores them: int8 weights, int32 biases, one
    float32 scale per output channel, and each activation's scale and zero point."""

    tensors: dict[str, np.ndarray]

    @property
    def flash_bytes(self) -> int:
        """Bytes of every stored tensor (what a C array of the model holds)."""
        return sum(array.nbytes for array in self.tensors.values())

    def save(self, path: Path) -> None:
        """Write the tensors as an ``.npz`` archive."""
        np.savez(path, **self.tensors)  # type: ignore[arg-type]


def export_int8(model: DeployedModel) -> Int8Export:
    """Integer weights and biases of every quantized layer, with their scales."""
    if model.bits >= FLOAT_BITS:
        raise ValueError("export_int8 needs a quantized model (deploy_int8)")
    qmax = 2 ** (model.bits - 1) - 1
    names = {id(p): n for n, p in model.module.named_parameters()}
    tensors: dict[str, np.ndarray] = {}
    exported: set[int] = set()
    for layer_name, layer in quantized_layers(model.module):
        for param, scale in integer_scales(layer):
            name = names[id(param)]
            step = scale.reshape(-1, *([1] * (param.dim() - 1)))
            q = torch.round(param.detach() / step)
            if name.rsplit(".", 1)[-1].startswith("weight"):
                tensors[name] = q.clamp(-qmax, qmax).to(torch.int8).numpy()
            else:
                tensors[name] = q.to(torch.int32).numpy()
            tensors[f"{name}.scale"] = scale.numpy().astype(np.float32)
            exported.add(id(param))
        for side in ("input", "output"):
            observer = getattr(layer, f"{side}_observer")
            scale, zero = observer.qparams()
            tensors[f"{layer_name}.{side}.scale"] = scale.numpy().reshape(1).astype(np.float32)
            tensors[f"{layer_name}.{side}.zero"] = zero.numpy().reshape(1).astype(np.int32)
    for name, param in model.module.named_parameters():
        if id(param) not in exported:
            tensors[name] = param.detach().numpy().astype(np.float32)  # left in float
    return Int8Export(tensors)


def dequantized(export: Int8Export) -> dict[str, torch.Tensor]:
    """The parameters the export stands for, back in float (integers times their scales)."""
    state = {}
    for name, array in export.tensors.items():
        if name.endswith((".scale", ".zero")):
            continue
        scale = export.tensors.get(f"{name}.scale")
        values = torch.from_numpy(array.astype(np.float32))
        if scale is not None:
            values = values * torch.from_numpy(scale).reshape(-1, *([1] * (array.ndim - 1)))
        state[name] = values
    return state


@dataclass(frozen=True)
class InferenceMemory:
    """RAM a device holds while it classifies a stream (weights stay in flash)."""

    input_bytes: int  # the current window of raw samples
    feature_bytes: int  # the window's feature frames, kept from hop to hop when streaming
    front_working_bytes: int  # the largest front-end layer's input and output
    temporal_working_bytes: int  # the largest temporal layer's input (the features), output
    # and scratch

    @property
    def peak_bytes(self) -> int:
        """The raw window, plus the front end at work beside the kept features, or the temporal
        stage at work on them (whichever is larger)."""
        front = self.feature_bytes + self.front_working_bytes
        return self.input_bytes + max(front, self.temporal_working_bytes)


def _layer_bytes(layer: nn.Module, x: torch.Tensor, y: object, element: int) -> int:
    out = y[0] if isinstance(y, tuple) else y
    assert isinstance(out, torch.Tensor)
    live = out.numel() * element + (0 if isinstance(layer, IN_PLACE) else x.numel() * element)
    if isinstance(layer, nn.LSTM):
        directions = 2 if layer.bidirectional else 1
        h = layer.hidden_size
        live += directions * (4 * h * ACCUMULATOR_BYTES + h * (CELL_STATE_BYTES + element))
    return live


@torch.no_grad()
def inference_memory(model: DeployedModel, channels: int, window_length: int) -> InferenceMemory:
    """Buffers of streaming inference with `model` on windows of ``(channels, window_length)``."""
    element = 4 if model.bits >= FLOAT_BITS else max(1, model.bits // 8)
    front_layers = {id(layer) for layer in model.layers()}
    largest = {True: 0, False: 0}  # front end, temporal stage

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        front = id(layer) in front_layers
        largest[front] = max(largest[front], _layer_bytes(layer, inputs[0], output, element))

    handles = [m.register_forward_hook(hook) for m in leaf_layers(model.module)]
    try:
        features = model.module.frontend(torch.zeros(1, channels, window_length))  # type: ignore[operator]
        model.module.temporal(features)  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    return InferenceMemory(
        input_bytes=channels * window_length * SAMPLE_BYTES,
        feature_bytes=features.numel() * element,
        front_working_bytes=largest[True],
        temporal_working_bytes=largest[False],
    )
