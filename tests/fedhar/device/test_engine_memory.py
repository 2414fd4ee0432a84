"""The device memory model against a reference step that really stores what it counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from fedhar.device.engine_memory import estimate_device_memory
from fedhar.device.memory import BitWidths, estimate_training_memory
from fedhar.device.planner import TrainingPlan, trainable_names
from fedhar.device.reference_step import Stored, measure_device_step, pack_bits, unpack_bits
from fedhar.models import MODEL_NAMES, build_model

PLANS = {
    "full": TrainingPlan("full", 0, 1, 1.0, 0),
    "last-layer": TrainingPlan("last_k", 1, 1, 1.0, 0),
    "last-two": TrainingPlan("last_k", 2, 1, 1.0, 0),
    "bias-only": TrainingPlan("bias_only", 0, 1, 1.0, 0),
}
WINDOW, BATCH = 32, 4


def _float_gradients(model, batch, targets, trainable) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).train()
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    F.cross_entropy(model(batch), targets).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    diff = torch.cat([(a[n] - b[n]).flatten() for n in b])
    return float(diff.norm() / torch.cat([g.flatten() for g in b.values()]).norm())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("bits", [32, 8, 4])
@pytest.mark.parametrize("window, size, width", [(WINDOW, BATCH, 1.0), (31, 1, 1.0), (33, 3, 0.5)])
def test_device_model_counts_what_the_reference_step_saves(name, plan, bits, window, size,
                                                           width) -> None:  # fmt: skip
    torch.manual_seed(0)
    model = build_model(name, 6, 5, width)
    trainable = trainable_names(model, PLANS[plan])
    batch, targets = torch.randn(size, 6, window), torch.randint(0, 5, (size,))
    torch.manual_seed(1)  # the same dropout mask in both steps
    saved, grads = measure_device_step(model, batch, targets, trainable, bits)
    torch.manual_seed(1)
    reference = _float_gradients(model, batch, targets, trainable)
    estimate = estimate_device_memory(model, size, (6, window), trainable,
                                      BitWidths(32, bits, 32, 32))  # fmt: skip
    assert estimate.saved_activation_bytes == saved
    assert sorted(grads) == sorted(reference) == sorted(trainable)
    limit = {32: 1e-4, 8: 0.03, 4: 0.3}[bits]  # stored activations cost only their rounding
    assert _relative_error(grads, reference) < limit


def test_device_model_stores_less_than_pytorch_where_it_keeps_bits_not_floats() -> None:
    model = build_model("microbi_convlstm", 6, 5)
    bias_only = trainable_names(model, PLANS["bias-only"])
    int8 = BitWidths(8, 8, 8, 8)
    device = estimate_device_memory(model, 8, (6, 64), bias_only, int8)
    host = estimate_training_memory(model, 8, (6, 64), bias_only, int8)
    assert device.saved_activation_bytes < host.saved_activation_bytes / 2
    head = trainable_names(model, PLANS["last-layer"])  # nothing flows back: both keep the input
    assert estimate_device_memory(model, 8, (6, 64), head, int8).saved_activation_bytes == (
        estimate_training_memory(model, 8, (6, 64), head, int8).saved_activation_bytes
    )


def test_stored_codes_and_packed_bits_round_trip() -> None:
    x = torch.randn(3, 5, 7)
    for bits, step in ((8, 1 / 255), (4, 1 / 15)):
        stored = Stored(x, bits)
        assert stored.codes.numel() == (x.numel() if bits == 8 else (x.numel() + 1) // 2)
        span = float(x.max() - x.min())
        assert torch.allclose(stored.restore(stored.codes), x, atol=span * step / 2 + 1e-6)
    mask = torch.rand(3, 11) > 0.5
    assert pack_bits(mask).numel() == 5
    assert torch.equal(unpack_bits(pack_bits(mask), mask.shape), mask)
