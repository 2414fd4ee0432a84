"""The training planner: the most capable local-training plan that fits a device's SRAM.

Candidate order, most capable first, and the first candidate that fits wins:

1. widest width first (``widths`` in descending order);
2. then the training mode: ``full`` > ``last_k`` for k = n-1 down to 2 > ``bias_only`` >
   ``last_k`` with k = 1. A layer group is one parameterised layer with its BatchNorm;
   ``bias_only`` trains every bias plus the classifier head (TinyTL's bias update), so it is a
   superset of head-only training (``last_k`` k = 1) and ranks just above it. It also needs
   more memory than head-only training (gradient flows through every layer), which is why it
   is not ranked last (it would then never be chosen);
3. then the largest batch size.

The order is fixed, so a bigger budget never yields a less capable plan, and equal inputs give
equal plans. With a flash budget, widths whose weights (at the plan's weight bits) do not fit
the device's flash are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from fedhar.device.engine_memory import estimate_device_memory
from fedhar.device.memory import (
    FP32,
    BitWidths,
    estimate_training_memory,
    flash_bytes,
    trace_layers,
)
from fedhar.models import ModelShape
from fedhar.partial.widths import WIDTH_LEVELS

MODES = ("full", "last_k", "bias_only")
BATCH_SIZES = (32, 16, 8, 4, 2, 1)
# How the planner counts a step's SRAM: what an on-device training engine stores (the default,
# validated by fedhar.device.reference_step), or what PyTorch on this host saves.
MEMORY_MODELS = {"device": estimate_device_memory, "torch-cpu": estimate_training_memory}


@dataclass(frozen=True)
class TrainingPlan:
    """How one client trains: which layers, at what width and batch size, at what SRAM cost."""

    mode: str  # "full" | "last_k" | "bias_only"
    last_k: int  # layer groups trained, counted from the head; 0 unless mode == "last_k"
    batch_size: int
    width: float
    peak_bytes: int  # estimated peak SRAM of one training step

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown plan mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if (self.mode == "last_k") != (self.last_k >= 1):
            raise ValueError(f"last_k must be >= 1 exactly when mode is 'last_k', got {self}")
        if self.batch_size < 1 or not self.width > 0:
            raise ValueError(f"batch_size must be >= 1 and width > 0, got {self}")


class PlanDeclined(Exception):
    """No plan fits; ``reason`` says why and ``smallest_bytes`` the least SRAM a plan needs."""

    def __init__(self, reason: str, smallest_bytes: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.smallest_bytes = smallest_bytes


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per trainable layer, input to output; BatchNorm joins the layer before."""
    groups: list[list[str]] = []
    for module_name, module in model.named_modules():
        names = [f"{module_name}.{n}" for n, _ in module.named_parameters(recurse=False)]
        if not names:
            continue
        if isinstance(module, nn.BatchNorm1d) and groups:
            groups[-1].extend(names)
        else:
            groups.append(names)
    return groups


def trainable_names(model: nn.Module, plan: TrainingPlan) -> list[str]:
    """Names of the parameters ``plan`` trains, in ``named_parameters`` order."""
    groups = layer_groups(model)
    if plan.mode == "full":
        return [n for group in groups for n in group]
    if plan.mode == "bias_only":
        return [
            n
            for n, _ in model.named_parameters()
            if n.startswith("head.") or n.rsplit(".", 1)[-1].startswith("bias")
        ]
    if plan.last_k >= len(groups):
        raise ValueError(
            f"last_k={plan.last_k} needs fewer than the model's {len(groups)} layer groups; "
            "use mode 'full' to train them all"
        )
    return [n for group in groups[-plan.last_k :] for n in group]


def apply_plan(model: nn.Module, plan: TrainingPlan) -> None:
    """Set ``requires_grad`` so that exactly the plan's parameters train."""
    train = set(trainable_names(model, plan))
    for name, param in model.named_parameters():
        param.requires_grad_(name in train)


def _mode_order(num_groups: int) -> list[tuple[str, int]]:
    """(mode, last_k) pairs, most capable first."""
    deep = [("last_k", k) for k in range(num_groups - 1, 1, -1)]
    return [("full", 0), *deep, ("bias_only", 0), ("last_k", 1)]


def candidate_plans(
    shape: ModelShape,
    bits: BitWidths = FP32,
    widths: Sequence[float] = WIDTH_LEVELS,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    optimizer_states: int = 1,
    memory_model: str = "device",
) -> Iterator[TrainingPlan]:
    """Every plan with its estimated peak, most capable first (see the module docstring)."""
    if memory_model not in MEMORY_MODELS:
        raise ValueError(
            f"unknown memory model {memory_model!r}; use one of {sorted(MEMORY_MODELS)}"
        )
    estimate_memory = MEMORY_MODELS[memory_model]
    for width in sorted(set(widths), reverse=True):
        model = shape.build(width)
        calls = trace_layers(model, (shape.in_channels, shape.window_length))
        for mode, k in _mode_order(len(layer_groups(model))):
            for batch in sorted(set(batch_sizes), reverse=True):
                plan = TrainingPlan(mode, k, batch, width, peak_bytes=0)
                estimate = estimate_memory(
                    model,
                    batch,
                    (shape.in_channels, shape.window_length),
                    trainable_names(model, plan),
                    bits,
                    optimizer_states,
                    calls,
                )
                yield TrainingPlan(mode, k, batch, width, estimate.peak_bytes)


def smallest_budget(
    shape: ModelShape,
    bits: BitWidths = FP32,
    widths: Sequence[float] = WIDTH_LEVELS,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    optimizer_states: int = 1,
    memory_model: str = "device",
) -> int:
    """The least SRAM (bytes) any plan needs; arguments as for ``plan_training``."""
    plans = candidate_plans(shape, bits, widths, batch_sizes, optimizer_states, memory_model)
    return min(plan.peak_bytes for plan in plans)


def plan_training(
    shape: ModelShape,
    budget_bytes: int,
    bits: BitWidths = FP32,
    widths: Sequence[float] = WIDTH_LEVELS,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    optimizer_states: int = 1,
    flash_budget_bytes: int | None = None,
    memory_model: str = "device",
) -> TrainingPlan:
    """The most capable plan whose peak SRAM fits ``budget_bytes`` and weights fit the flash.

    Parameters
    ----------
    shape : ModelShape
        The model to train.
    budget_bytes : int
        SRAM available for training (device SRAM minus the runtime reserve).
    bits : BitWidths
        Storage bits per tensor kind.
    widths, batch_sizes : sequence
        Widths and batch sizes to consider (tried largest first).
    optimizer_states : int
        State tensors per parameter: 0 plain SGD, 1 SGD momentum, 2 Adam.
    flash_budget_bytes : int, optional
        Flash that holds the weights; None skips the flash check.
    memory_model : str
        ``"device"`` (what an on-device training engine stores, ``fedhar.device.engine_memory``)
        or ``"torch-cpu"`` (what PyTorch on this host saves, ``fedhar.device.memory``).

    Raises
    ------
    PlanDeclined
        If no plan fits; the reason names the smallest SRAM the model needs, or the flash its
        weights need when they fit the flash at no width.
    """
    if not widths or not batch_sizes:
        raise ValueError("widths and batch_sizes must each list at least one value")

    def plans_at(candidate_widths: Sequence[float]) -> Iterator[TrainingPlan]:
        return candidate_plans(shape, bits, candidate_widths, batch_sizes, optimizer_states,
                               memory_model)  # fmt: skip

    flash_need = {width: flash_bytes(shape.build(width), bits.weights) for width in widths}
    flash = flash_budget_bytes
    stored = [width for width in widths if flash is None or flash_need[width] <= flash]
    if not stored:
        width = min(widths, key=lambda w: flash_need[w])
        raise PlanDeclined(
            f"{shape.name} needs at least {flash_need[width]} bytes of flash for its weights at "
            f"{bits.weights} bits (width {width}) but the device has {flash} bytes of flash",
            min(plan.peak_bytes for plan in plans_at(widths)),
        )
    smallest: TrainingPlan | None = None
    plans = plans_at(stored)
    for plan in plans:
        if plan.peak_bytes <= budget_bytes:
            return plan
        if smallest is None or plan.peak_bytes < smallest.peak_bytes:
            smallest = plan
    assert smallest is not None
    raise PlanDeclined(
        f"{shape.name} needs at least {smallest.peak_bytes} bytes of SRAM to train "
        f"(width {smallest.width}, {smallest.mode}, batch {smallest.batch_size}) "
        f"but the budget is {budget_bytes} bytes",
        smallest.peak_bytes,
    )
