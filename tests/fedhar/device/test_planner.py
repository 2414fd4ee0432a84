"""The training planner: order, determinism, monotonicity and declining with a reason."""

from __future__ import annotations

import pytest
import torch

from fedhar.device.engine_memory import estimate_device_memory
from fedhar.device.memory import BitWidths, flash_bytes
from fedhar.device.planner import (
    PlanDeclined,
    TrainingPlan,
    apply_plan,
    candidate_plans,
    layer_groups,
    plan_training,
    smallest_budget,
    trainable_names,
)
from fedhar.device.reference_step import measure_device_step
from fedhar.models import ModelShape, build_model

ARGS = (ModelShape("microbi_convlstm", 6, 6, 64),)
SMALL = {"widths": (1.0, 0.5), "batch_sizes": (8, 2, 1)}


def _rank(plan: TrainingPlan) -> int:
    """Position of ``plan`` in the capability order."""
    order = [(p.width, p.mode, p.last_k, p.batch_size) for p in candidate_plans(*ARGS, **SMALL)]
    return order.index((plan.width, plan.mode, plan.last_k, plan.batch_size))


def test_huge_budget_gives_full_training_at_full_width_and_largest_batch() -> None:
    plan = plan_training(*ARGS, budget_bytes=10**9)
    assert (plan.mode, plan.width, plan.batch_size) == ("full", 1.0, 32)


def test_planning_is_deterministic() -> None:
    assert plan_training(*ARGS, 150_000, **SMALL) == plan_training(*ARGS, 150_000, **SMALL)


def test_bigger_budget_never_gives_a_less_capable_plan() -> None:
    budgets = [smallest_budget(*ARGS, **SMALL) * f for f in (1, 1.5, 2, 4, 8, 16, 64)]
    ranks = [_rank(plan_training(*ARGS, int(b), **SMALL)) for b in budgets]
    assert ranks == sorted(ranks, reverse=True)
    assert ranks[0] > ranks[-1]


@pytest.mark.parametrize("budget", [60_000, 120_000, 300_000])
def test_chosen_plan_stores_what_it_budgeted_when_it_really_trains(budget: int) -> None:
    int8 = BitWidths(weights=8, activations=8)
    plan = plan_training(*ARGS, budget, int8, **SMALL)
    assert plan.peak_bytes <= budget
    model = build_model("microbi_convlstm", 6, 6, plan.width)
    trainable = trainable_names(model, plan)
    batch = torch.randn(plan.batch_size, 6, 64)
    saved, grads = measure_device_step(model, batch, torch.zeros(plan.batch_size).long(),
                                       trainable, activation_bits=8)  # fmt: skip
    assert sorted(grads) == sorted(trainable)  # the plan's parameters, and only those, learn
    estimate = estimate_device_memory(model, plan.batch_size, (6, 64), trainable, int8)
    # the planner's peak holds what the step really saved, beside the static and working terms
    assert plan.peak_bytes == estimate.peak_bytes - estimate.saved_activation_bytes + saved
    bigger = plan_training(*ARGS, 2 * budget, int8, **SMALL)
    assert _rank(bigger) <= _rank(plan)


def test_decline_names_the_smallest_sram() -> None:
    least = smallest_budget(*ARGS, **SMALL)
    with pytest.raises(PlanDeclined) as err:
        plan_training(*ARGS, least - 1, **SMALL)
    assert err.value.smallest_bytes == least
    assert str(least) in err.value.reason
    assert plan_training(*ARGS, least, **SMALL).peak_bytes == least


def test_weights_must_fit_the_flash() -> None:
    need = {w: flash_bytes(build_model("microbi_convlstm", 6, 6, w)) for w in SMALL["widths"]}
    assert plan_training(*ARGS, 10**9, **SMALL, flash_budget_bytes=need[1.0]).width == 1.0
    narrow = plan_training(*ARGS, 10**9, **SMALL, flash_budget_bytes=need[1.0] - 1)
    assert narrow.width == 0.5  # the full-width weights no longer fit, the half-width ones do
    with pytest.raises(PlanDeclined) as err:
        plan_training(*ARGS, 10**9, **SMALL, flash_budget_bytes=need[0.5] - 1)
    assert f"needs at least {need[0.5]} bytes of flash" in err.value.reason
    assert f"has {need[0.5] - 1} bytes of flash" in err.value.reason
    assert err.value.smallest_bytes == smallest_budget(*ARGS, **SMALL)
    int8 = BitWidths(weights=8, activations=8)
    assert plan_training(*ARGS, 10**9, int8, **SMALL, flash_budget_bytes=need[0.5] - 1).width == 1.0


def test_smallest_budget_shrinks_with_narrower_widths() -> None:
    assert smallest_budget(*ARGS, widths=(0.25,)) < smallest_budget(*ARGS, widths=(1.0,))


def test_mode_order_puts_bias_only_between_deep_and_head_only() -> None:
    modes = [(p.mode, p.last_k) for p in candidate_plans(*ARGS, widths=(1.0,), batch_sizes=(1,))]
    assert modes == [("full", 0), ("last_k", 3), ("last_k", 2), ("bias_only", 0), ("last_k", 1)]


def test_layer_groups_attach_batchnorm_to_its_conv() -> None:
    groups = layer_groups(build_model("microbi_convlstm", 6, 6))
    assert groups[0] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert groups[-1] == ["head.weight", "head.bias"]
    assert len(groups) == 4


def test_trainable_names_and_apply_plan() -> None:
    model = build_model("dscnn", 6, 6)
    plan = TrainingPlan("bias_only", 0, 4, 1.0, peak_bytes=0)
    names = trainable_names(model, plan)
    assert "head.weight" in names
    assert all(n.startswith("head.") or n.endswith("bias") for n in names)
    apply_plan(model, plan)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    apply_plan(model, TrainingPlan("last_k", 1, 4, 1.0, peak_bytes=0))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "head.weight",
        "head.bias",
    }


def test_invalid_plans_are_rejected() -> None:
    with pytest.raises(ValueError, match="bias_only"):
        TrainingPlan("partial", 0, 4, 1.0, peak_bytes=0)
    with pytest.raises(ValueError, match="last_k"):
        TrainingPlan("last_k", 0, 4, 1.0, peak_bytes=0)
    model = build_model("dscnn", 6, 6)
    with pytest.raises(ValueError, match="full"):
        trainable_names(model, TrainingPlan("last_k", 99, 4, 1.0, peak_bytes=0))
