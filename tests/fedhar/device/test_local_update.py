"""A device's numerics and training plan: bit widths from its profile, SRAM and flash limits."""

from __future__ import annotations

import dataclasses

import pytest

from fedhar.device.local_update import (
    QuantSettings,
    max_width,
    plan_on_device,
    quant_config,
    storage_bits,
    trained_parameters,
)
from fedhar.device.memory import FP32, BitWidths, flash_bytes
from fedhar.device.planner import PlanDeclined, TrainingPlan, candidate_plans, smallest_budget
from fedhar.device.profiles import DeviceProfile, load_catalogue
from fedhar.models import ModelShape, build_model
from fedhar.quant.qat import QuantConfig
from tests.conftest import CATALOGUE_YAML

SHAPE = ModelShape("microbi_convlstm", in_channels=6, num_classes=6, window_length=64)
INT8 = QuantSettings()
FP32_TRAINING = QuantSettings(enabled=False)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, DeviceProfile]:
    return load_catalogue(CATALOGUE_YAML)


@pytest.fixture(scope="module")
def nrf(catalogue: dict[str, DeviceProfile]) -> DeviceProfile:
    return catalogue["nrf52840"]


def with_budget(profile: DeviceProfile, budget_bytes: int) -> DeviceProfile:
    """The same device with ``budget_bytes`` of SRAM left for training."""
    return dataclasses.replace(
        profile, sram_bytes=profile.runtime_reserve_bytes + budget_bytes, sram_total_bytes=None
    )


def rank(plan: TrainingPlan | None) -> int:
    """Position in the full-width capability order; a decline ranks below every plan."""
    order = [(p.mode, p.last_k, p.batch_size) for p in candidate_plans(*_args(), widths=(1.0,))]
    return len(order) if plan is None else order.index((plan.mode, plan.last_k, plan.batch_size))


def _args() -> tuple[ModelShape]:
    return (SHAPE,)


def plan_or_none(profile: DeviceProfile, settings: QuantSettings) -> TrainingPlan | None:
    try:
        return plan_on_device(profile, SHAPE, 1.0, settings)
    except PlanDeclined:
        return None


def test_eight_bit_profile_trains_with_int8_fake_quant(catalogue, nrf) -> None:
    assert (nrf.weight_bits, nrf.activation_bits) == (8, 8)
    assert quant_config(nrf, INT8) == QuantConfig(8, 8, qas=True, observer_momentum=None)
    assert storage_bits(nrf, INT8) == BitWidths(weights=8, activations=8)
    assert quant_config(nrf, QuantSettings(qas=False)) == QuantConfig(8, 8, qas=False)
    assert quant_config(nrf, FP32_TRAINING) is None and storage_bits(nrf, FP32_TRAINING) == FP32
    phone = catalogue["android_phone"]
    assert quant_config(phone, INT8) is None and storage_bits(phone, INT8) == FP32


def test_configured_bits_override_the_profile(catalogue, nrf) -> None:
    four = QuantSettings(weight_bits=4, activation_bits=4)
    assert quant_config(nrf, four) == QuantConfig(4, 4, observer_momentum=None)
    assert storage_bits(nrf, four) == BitWidths(weights=4, activations=4)
    weights_only = QuantSettings(weight_bits=8)  # the phone's fp32 activations stay
    phone = catalogue["android_phone"]
    assert quant_config(phone, weights_only) == QuantConfig(8, 32, observer_momentum=None)
    assert storage_bits(phone, weights_only) == BitWidths(weights=8, activations=32)
    assert quant_config(nrf, QuantSettings(weight_bits=32, activation_bits=32)) is None
    with pytest.raises(ValueError, match="weight_bits=2 is not supported"):
        quant_config(nrf, QuantSettings(weight_bits=2))


def test_int8_plan_is_at_least_as_capable_on_tight_budgets(nrf) -> None:
    least = smallest_budget(*_args(), bits=storage_bits(nrf, INT8), widths=(1.0,))
    budgets = [int(least * 1.25**i) for i in range(12)]
    int8 = [rank(plan_or_none(with_budget(nrf, b), INT8)) for b in budgets]
    fp32 = [rank(plan_or_none(with_budget(nrf, b), FP32_TRAINING)) for b in budgets]
    assert all(i <= f for i, f in zip(int8, fp32, strict=True))
    assert any(i < f for i, f in zip(int8, fp32, strict=True))
    assert int8[0] < rank(None) == fp32[0]  # fp32 declines where int8 still trains


def test_max_width_grows_with_sram(nrf) -> None:
    bits = storage_bits(nrf, INT8)
    narrowest = [p for p in candidate_plans(*_args(), bits, widths=(0.25,)) if p.mode == "full"]
    least_full = min(p.peak_bytes for p in narrowest)  # full training of the narrowest model
    budgets = [int(least_full * 1.2**i) for i in range(16)]
    widths = [max_width(with_budget(nrf, b), SHAPE, INT8) for b in budgets]
    assert widths == sorted(widths)
    assert widths[0] == 0.25 and widths[-1] == 1.0
    assert len(set(widths)) == 4  # every level on the way, not a single jump
    below_everything = smallest_budget(*_args(), bits, widths=(0.25,)) - 1
    assert max_width(with_budget(nrf, below_everything), SHAPE, INT8) == 0.0


def test_weights_that_do_not_fit_the_flash_decline(nrf) -> None:
    full = build_model(SHAPE.name, SHAPE.in_channels, SHAPE.num_classes, 1.0)
    need_int8, need_fp32 = flash_bytes(full, 8), flash_bytes(full, 32)
    tiny = dataclasses.replace(nrf, flash_bytes=need_int8 - 1)
    with pytest.raises(PlanDeclined) as err:
        plan_on_device(tiny, SHAPE, 1.0, INT8)
    assert f"needs at least {need_int8} bytes of flash" in err.value.reason
    assert f"at 8 bits (width 1.0) but the device has {need_int8 - 1} bytes" in err.value.reason
    assert 0.0 < max_width(tiny, SHAPE, INT8) < 1.0  # a narrower sub-model still fits
    # flash that holds the int8 weights but not the fp32 ones
    small = dataclasses.replace(nrf, flash_bytes=need_fp32 - 1)
    assert plan_on_device(small, SHAPE, 1.0, INT8).width == 1.0
    with pytest.raises(PlanDeclined, match=f"{need_fp32} bytes of flash .* at 32 bits"):
        plan_on_device(small, SHAPE, 1.0, FP32_TRAINING)


def test_without_any_full_plan_the_width_that_trains_the_most_parameters_wins(nrf) -> None:
    bits = storage_bits(nrf, INT8)
    narrowest = [p for p in candidate_plans(*_args(), bits, widths=(0.25,)) if p.mode == "full"]
    device = with_budget(nrf, min(p.peak_bytes for p in narrowest) - 1)  # no width trains fully
    trained = {}
    for width in (1.0, 0.75, 0.5, 0.25):
        try:
            trained[width] = trained_parameters(SHAPE, plan_on_device(device, SHAPE, width, INT8))
        except PlanDeclined:
            continue
    assert len(trained) >= 2 and len(set(trained.values())) >= 2
    best = max(trained.values())
    assert max_width(device, SHAPE, INT8) == max(w for w, n in trained.items() if n == best)
    assert max_width(device, SHAPE, INT8) < max(trained)  # not simply the widest with a plan
