"""The model as a device runs it: BatchNorm folded, int8 weights and activations, integer convs.

Deployment takes the federated float model, folds every BatchNorm into the convolution before
it, quantizes weights per output channel and activations per tensor (ranges calibrated on
windows the server holds), and runs the convolutional front end in integer arithmetic
(``fedhar.quant.qat.integer_forward``); the temporal stage runs fake-quantized. As an int8
engine does, a ReLU after a convolution is fused into its output (the output grid starts at
zero), and each tensor has one grid: a layer reads its input on the grid its producer wrote
(pools keep the grid). The integer front end is exact, so features computed once on a stream
equal the features of each window.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedhar.models.ops import OpCounts, counting, layer_ops, leaf_layers
from fedhar.models.stages import front_end_layers, run_front_end
from fedhar.quant.qat import (
    ActivationObserver,
    QConv1d,
    QuantConfig,
    calibrate,
    integer_forward,
    prepare_qat,
    quantized_layers,
)

FLOAT_BITS = 32


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in which each front-end BatchNorm1d right after a Conv1d is folded into
    that convolution's weight and bias and replaced by an identity (eval-mode statistics)."""
    folded = copy.deepcopy(model).eval()
    layers = front_end_layers(folded)
    names = {id(module): name for name, module in folded.named_modules()}
    for conv, norm in itertools.pairwise(layers):
        if not (isinstance(conv, nn.Conv1d) and isinstance(norm, nn.BatchNorm1d)):
            continue
        assert norm.running_var is not None and norm.running_mean is not None
        gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(gain)
        conv.weight.mul_(gain.reshape(-1, 1, 1))
        conv.bias = nn.Parameter((bias - norm.running_mean) * gain + norm.bias)
        parent, _, child = names[id(norm)].rpartition(".")
        setattr(folded.get_submodule(parent), child, nn.Identity())
    return folded


@dataclass(frozen=True)
class DeployedModel:
    """A staged model in eval mode; with ``bits`` < 32 fake-quantized and calibrated, its convs
    run in integer arithmetic."""

    module: nn.Module
    bits: int

    def layers(self) -> list[nn.Module]:
        """The front end's layers in execution order."""
        return front_end_layers(self.module)

    @torch.no_grad()
    def frontend(self, x: Tensor, counts: OpCounts | None = None) -> Tensor:
        """Feature frames ``(B, C, T)`` -> ``(B, F, T')``; adds the operations to ``counts``."""

        def call(layer: nn.Module, inputs: Tensor) -> Tensor:
            integer = isinstance(layer, QConv1d) and self.bits < FLOAT_BITS
            out = integer_forward(layer, inputs) if integer else layer(inputs)
            if counts is not None:
                counts.add(layer_ops(layer, (inputs,), out))
            return out

        return run_front_end(self.module, x, call)

    @torch.no_grad()
    def temporal(self, features: Tensor, counts: OpCounts | None = None) -> Tensor:
        """Logits ``(B, K)`` of feature frames; adds the operations to ``counts``."""
        front = {id(layer) for layer in self.layers()}
        temporal = [m for m in leaf_layers(self.module) if id(m) not in front]
        with counting(temporal, counts if counts is not None else OpCounts()):
            # one memory layout, so that reductions over time sum in one order
            return self.module.temporal(features.contiguous())  # type: ignore[operator, no-any-return]

    def logits(self, x: np.ndarray, counts: OpCounts | None = None) -> np.ndarray:
        """Logits ``(N, K)`` of windows ``(N, C, T)``, each window on its own."""
        if len(x) == 0:
            return np.zeros((0, 0), np.float32)
        windows = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return self.temporal(self.frontend(windows, counts), counts).numpy()


def deploy_float(model: nn.Module) -> DeployedModel:
    """The float model (the cloud's), BatchNorm folded."""
    return DeployedModel(fold_batchnorm(model), FLOAT_BITS)


def deploy_int8(model: nn.Module, calibration_x: np.ndarray, bits: int = 8) -> DeployedModel:
    """The device's model: BatchNorm folded, `bits`-bit weights (per channel) and activations
    (per tensor), activation ranges calibrated on ``calibration_x`` ``(M, C, T)``."""
    if len(calibration_x) == 0:
        raise ValueError("deploy_int8 needs calibration windows to set activation ranges")
    quantized = prepare_qat(fold_batchnorm(model), QuantConfig(bits, bits, qas=False))
    batches = np.array_split(np.ascontiguousarray(calibration_x, dtype=np.float32), 8)
    calibrate(quantized, [torch.from_numpy(batch) for batch in batches if len(batch)])
    share_grids(quantized)
    return DeployedModel(quantized.eval(), bits)


@torch.no_grad()
def share_grids(quantized: nn.Module) -> None:
    """Fuse each front-end ReLU into the convolution before it and give every quantized layer
    its producer's output grid as its input grid (the front end's last grid feeds the temporal
    stage)."""
    produced: ActivationObserver | None = None  # the grid of the tensor flowing now
    for layer in front_end_layers(quantized):
        if isinstance(layer, QConv1d):
            if produced is not None:
                _copy_range(produced, layer.input_observer)
            produced = layer.output_observer
        elif isinstance(layer, nn.ReLU) and produced is not None:
            produced.min_val.clamp_(min=0.0)  # negatives were going to be zeroed anyway
    temporal = [m for _, m in quantized_layers(quantized) if not isinstance(m, QConv1d)]
    if produced is not None and temporal:
        _copy_range(produced, temporal[0].input_observer)


def _copy_range(source: ActivationObserver, target: ActivationObserver) -> None:
    target.min_val.copy_(source.min_val)
    target.max_val.copy_(source.max_val)
    target.seen.fill_(True)
