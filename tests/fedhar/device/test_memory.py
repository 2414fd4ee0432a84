"""The analytic training-memory model against a saved-tensor measurement."""

from __future__ import annotations

import pytest
from torch import nn

from fedhar.device.memory import (
    BitWidths,
    estimate_training_memory,
    flash_bytes,
    measure_peak_bytes,
    measure_training_memory,
)
from fedhar.models import MODEL_NAMES, build_model, count_parameters

WINDOW = (9, 64)


def _plans(model: nn.Module) -> dict[str, list[str]]:
    names = [n for n, _ in model.named_parameters()]
    return {
        "full": names,
        "last_layer": [n for n in names if n.startswith("head.")],
        "bias_only": [n for n in names if n.startswith("head.") or "bias" in n.split(".")[-1]],
    }


def _assert_within_ten_percent(model: nn.Module, batch: int, plan: str) -> None:
    trainable = _plans(model)[plan]
    estimate = estimate_training_memory(model, batch, WINDOW, trainable)
    measured = measure_training_memory(model, batch, WINDOW, trainable)
    assert estimate.comparable_bytes == pytest.approx(measured.comparable_bytes, rel=0.10)
    assert estimate.saved_activation_bytes == pytest.approx(
        measured.saved_activation_bytes, rel=0.10, abs=1024
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("plan", ["full", "last_layer", "bias_only"])
def test_estimate_within_ten_percent_of_measurement(name: str, batch: int, plan: str) -> None:
    model = build_model(name, 9, 6, width=0.5 if name == "deepconvlstm" else 1.0)
    _assert_within_ten_percent(model, batch, plan)


@pytest.mark.parametrize("batch", [1, 8])  # small batches keep the full-width case fast
@pytest.mark.parametrize("plan", ["full", "last_layer", "bias_only"])
def test_full_width_deepconvlstm_within_ten_percent(batch: int, plan: str) -> None:
    _assert_within_ten_percent(build_model("deepconvlstm", 9, 6, width=1.0), batch, plan)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("plan", ["full", "last_layer", "bias_only"])
def test_native_kernel_saved_tensors_equal_the_measurement(name: str, plan: str) -> None:
    model = build_model(name, 9, 6)
    trainable = _plans(model)[plan]
    estimate = estimate_training_memory(model, 4, WINDOW, trainable, onednn=False)
    measured = measure_training_memory(model, 4, WINDOW, trainable, onednn=False)
    assert estimate.saved_activation_bytes == measured.saved_activation_bytes


# The profiler's peak of a real step (torch.profiler allocation events), against the estimate.
# Native kernels: within 10% everywhere. oneDNN: within 10% from batch 16 on but for DS-CNN's
# last-layer plan (oneDNN's convolution scratchpad, not modelled); at batch 4 the LSTM models'
# are up to 17% low (oneDNN's LSTM allocates more than its workspace at small batches).
ONEDNN_TOLERANCE = {("dscnn", "last_layer", 16): 0.20, **{
    (name, plan, 4): 0.20 for name in ("microbi_convlstm", "deepconvlstm")
    for plan in ("full", "last_layer", "bias_only")
}}  # fmt: skip


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("plan", ["full", "last_layer", "bias_only"])
@pytest.mark.parametrize("batch", [4, 16])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "native"])
def test_peak_tracks_the_profilers_peak_of_a_real_step(
    name: str, plan: str, batch: int, onednn: bool
) -> None:
    model = build_model(name, 9, 6)
    trainable = _plans(model)[plan]
    estimate = estimate_training_memory(model, batch, WINDOW, trainable, onednn=onednn)
    measured = measure_peak_bytes(model, batch, WINDOW, trainable, onednn=onednn)
    tolerance = ONEDNN_TOLERANCE.get((name, plan, batch), 0.10) if onednn else 0.10
    assert estimate.peak_bytes == pytest.approx(measured, rel=tolerance)


def test_a_frozen_lstm_still_costs_its_training_workspace_in_the_forward_pass() -> None:
    model = build_model("deepconvlstm", 9, 6)
    head_only = _plans(model)["last_layer"]
    estimate = estimate_training_memory(model, 16, WINDOW, head_only)
    assert estimate.forward_peak_bytes > 10 * estimate.saved_activation_bytes
    assert estimate.peak_bytes == pytest.approx(
        measure_peak_bytes(model, 16, WINDOW, head_only), rel=0.10
    )


@pytest.mark.parametrize("states", [0, 2])
def test_optimizer_state_matches_measurement(states: int) -> None:
    model = build_model("dscnn", 9, 6)
    trainable = _plans(model)["full"]
    estimate = estimate_training_memory(model, 4, WINDOW, trainable, optimizer_states=states)
    measured = measure_training_memory(model, 4, WINDOW, trainable, optimizer_states=states)
    assert (
        estimate.optimizer_bytes == measured.optimizer_bytes == 4 * states * count_parameters(model)
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_peak_grows_with_batch_size(name: str) -> None:
    model = build_model(name, 9, 6)
    for trainable in _plans(model).values():
        peaks = [
            estimate_training_memory(model, b, WINDOW, trainable).peak_bytes for b in (1, 8, 32)
        ]
        assert peaks[0] < peaks[1] < peaks[2]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_last_layer_below_bias_only_below_full(name: str) -> None:
    model = build_model(name, 9, 6)
    peak = {
        plan: estimate_training_memory(model, 8, WINDOW, trainable).peak_bytes
        for plan, trainable in _plans(model).items()
    }
    assert peak["last_layer"] < peak["bias_only"] < peak["full"]


def test_bit_widths_scale_terms() -> None:
    model = build_model("microbi_convlstm", 9, 6)
    trainable = _plans(model)["full"]
    fp32 = estimate_training_memory(model, 8, WINDOW, trainable)
    int8 = estimate_training_memory(
        model, 8, WINDOW, trainable, BitWidths(weights=8, activations=8, gradients=8)
    )
    assert int8.gradient_bytes * 4 == fp32.gradient_bytes
    assert int8.input_bytes * 4 == fp32.input_bytes
    assert int8.saved_activation_bytes < fp32.saved_activation_bytes
    assert int8.optimizer_bytes == fp32.optimizer_bytes


def test_estimate_does_not_touch_the_model() -> None:
    model = build_model("dscnn", 9, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_training_memory(model, 4, WINDOW, _plans(model)["full"])
    measure_training_memory(model, 4, WINDOW, _plans(model)["full"])
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_trainable_name_is_rejected() -> None:
    model = build_model("dscnn", 9, 6)
    with pytest.raises(ValueError, match="named_parameters"):
        estimate_training_memory(model, 1, WINDOW, ["nope.weight"])


def test_bad_optimizer_states_is_rejected() -> None:
    model = build_model("dscnn", 9, 6)
    with pytest.raises(ValueError, match="Adam"):
        estimate_training_memory(model, 1, WINDOW, [], optimizer_states=3)


def test_flash_bytes_scales_with_weight_bits() -> None:
    model = build_model("dscnn", 9, 6)
    assert flash_bytes(model, 32) == 4 * flash_bytes(model, 8)
    assert flash_bytes(model, 8) >= count_parameters(model)
