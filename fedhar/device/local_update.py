"""One local update as a simulated wearable runs it: its sensor, SRAM plan, QAT and cost.

``prepare_local_update`` turns a device, the model sent to it and the server's training
settings into a frozen `LocalUpdate`: the SRAM plan's trainable parameters and batch size, the
learning rate scaled to that batch, the QAT-prepared and calibrated model where the device
trains in integers, and the simulated compute time. ``run_local_update`` trains it. Plans,
bit widths and widths are pure functions of the device profile, the model and seeds, so a
client and the server agree on a device's capabilities without exchanging more than its name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from fedhar.data.dataset import WindowDataset
from fedhar.device.costs import simulate_client_cost, training_ops
from fedhar.device.memory import BitWidths
from fedhar.device.planner import (
    PlanDeclined,
    TrainingPlan,
    apply_plan,
    plan_training,
    trainable_names,
)
from fedhar.device.profiles import DeviceProfile, client_seed, training_budget_bytes
from fedhar.device.sensors import SensorVariability, apply_sensor_model, draw_sensor_instance
from fedhar.federation import ClientData
from fedhar.models import ModelShape
from fedhar.partial.widths import WIDTH_LEVELS
from fedhar.quant.qat import QuantConfig, calibrate, prepare_qat, scale_gradients
from fedhar.seeding import derive_seed
from fedhar.train import TrainConfig, TrainResult, train_head_first, train_local

CALIBRATION_WINDOWS = 64  # windows the QAT observers see before the first step
StepHook = Callable[[nn.Module], None]


@dataclass(frozen=True)
class QuantSettings:
    """Quantization-aware local training; bit widths come from each device profile."""

    enabled: bool = True  # devices whose profile says 8 bits train with fake-quant
    qas: bool = True  # quantization-aware scaling of gradients (Lin et al. 2022)
    weight_bits: int | None = None  # override every device's weight bits (None: profile)
    activation_bits: int | None = None  # override every device's activation bits


def quant_config(profile: DeviceProfile, settings: QuantSettings) -> QuantConfig | None:
    """The device's QAT config, or None when it trains in fp32."""
    weight_bits = settings.weight_bits or profile.weight_bits
    activation_bits = settings.activation_bits or profile.activation_bits
    if not settings.enabled or (weight_bits >= 32 and activation_bits >= 32):
        return None
    # A plain running min/max: BatchNorm's training statistics can leave a moving average.
    return QuantConfig(weight_bits, activation_bits, qas=settings.qas, observer_momentum=None)


def storage_bits(profile: DeviceProfile, settings: QuantSettings) -> BitWidths:
    """Bits the memory model charges: weights and activations shrink under QAT."""
    config = quant_config(profile, settings)
    if config is None:
        return BitWidths()
    return BitWidths(weights=config.weight_bits, activations=config.activation_bits)


@lru_cache(maxsize=256)
def plan_on_device(
    profile: DeviceProfile, model: ModelShape, width: float, settings: QuantSettings
) -> TrainingPlan:
    """The most capable local-training plan at ``width`` that fits the device's SRAM and flash.

    Raises
    ------
    PlanDeclined
        When no plan fits; the reason names the SRAM the model needs, or the flash its weights
        need at the device's weight bits.
    """
    return plan_training(
        model,
        training_budget_bytes(profile),
        bits=storage_bits(profile, settings),
        widths=(width,),
        flash_budget_bytes=profile.flash_bytes,
    )


def max_width(profile: DeviceProfile, model: ModelShape, settings: QuantSettings) -> float:
    """The width of `widest_plan`; 0.0 when not even the narrowest model fits."""
    plan = widest_plan(profile, model, settings)
    return 0.0 if plan is None else plan.width


def widest_plan(
    profile: DeviceProfile, model: ModelShape, settings: QuantSettings
) -> TrainingPlan | None:
    """The plan at the widest level at which the device can update every parameter of the
    sub-model.

    When no width trains fully, the plan (last-k, bias-only) that trains the most parameters
    (the wider on a tie); None when not even the narrowest model fits.
    """
    fits: list[TrainingPlan] = []
    for width in WIDTH_LEVELS:
        try:
            fits.append(plan_on_device(profile, model, width, settings))
        except PlanDeclined:
            continue
    full = [plan for plan in fits if plan.mode == "full"]
    if full:
        return max(full, key=lambda plan: plan.width)
    if not fits:
        return None
    return max(fits, key=lambda plan: (trained_parameters(model, plan), plan.width))


def trained_parameters(model: ModelShape, plan: TrainingPlan) -> int:
    """How many parameters ``plan`` updates."""
    sub = model.build(plan.width)
    names = set(trainable_names(sub, plan))
    return sum(p.numel() for n, p in sub.named_parameters() if n in names)


def record_with_device(
    windows: WindowDataset,
    profile: DeviceProfile,
    variability: SensorVariability,
    device_seed: int,
    call_seed: int,
) -> WindowDataset:
    """The windows as this device instance would have recorded them."""
    if len(windows) == 0:
        return windows
    instance = draw_sensor_instance(profile, device_seed)
    x = apply_sensor_model(windows.x, windows.sampling_rate_hz, instance, variability, call_seed)
    return replace(windows, x=x)  # x: (N, C, T) float32


def as_recorded(
    data: ClientData, device: DeviceProfile, variability: SensorVariability, run_seed: int
) -> ClientData:
    """A client's train and test windows as their device instance recorded them."""
    seed = client_seed(data.user, run_seed)
    return ClientData(
        user=data.user,
        device=device.name,
        train=record_with_device(data.train, device, variability, seed, derive_seed(seed, 0)),
        test=record_with_device(data.test, device, variability, seed, derive_seed(seed, 1)),
    )


@dataclass(frozen=True)
class LocalUpdate:
    """A local update as the device will run it."""

    model: nn.Module  # the sent model; QAT-prepared and calibrated when the device quantizes
    config: TrainConfig  # the plan's batch size and the learning rate scaled to it
    trainable: tuple[str, ...] | None  # parameters the plan trains; None: every parameter
    step_hook: StepHook | None  # quantization-aware gradient scaling, under QAT
    sim_compute_s: float  # simulated on-device compute time; 0.0 without a device


def prepare_local_update(
    model: nn.Module,
    device: DeviceProfile | None,
    shape: ModelShape,
    width: float,
    quant: QuantSettings,
    config: TrainConfig,
    train_x: np.ndarray,  # (N, C, T): the user's training windows
) -> LocalUpdate:
    """Fit the server's ``config`` for ``model`` (at ``width``) to ``device``; no device: as is.

    Raises
    ------
    PlanDeclined
        When no plan at ``width`` fits the device's SRAM and flash.
    """
    if device is None:
        return LocalUpdate(model, config, None, None, 0.0)
    plan = plan_on_device(device, shape, width, quant)
    qat = quant_config(device, quant)
    step_hook: StepHook | None = None
    if qat is not None:
        model = prepare_qat(model, qat)
        calibrate(model, [torch.from_numpy(train_x[:CALIBRATION_WINDOWS])])
        step_hook = scale_gradients
    apply_plan(model, plan)
    batch_size = min(config.batch_size, plan.batch_size)
    # Linear scaling rule: a device that can only afford smaller batches takes smaller
    # steps, so that its many steps do not outweigh the clients training at full batch.
    lr = config.lr * batch_size / config.batch_size
    trainable = tuple(trainable_names(model, plan))
    ops = training_ops(model, shape.in_channels, shape.window_length, trainable)
    compute_s = simulate_client_cost(device, ops, len(train_x), config.epochs, 0, 0).compute_s
    planned = replace(config, batch_size=batch_size, lr=lr)
    return LocalUpdate(model, planned, trainable, step_hook, compute_s)


@dataclass(frozen=True)
class LocalResult:
    """What a local update produced: the new state and which of its entries changed."""

    state: dict[str, torch.Tensor]
    changed: tuple[str, ...]  # trained parameters and every buffer (BatchNorm statistics)
    train: TrainResult
    compute_seconds: float  # host wall time of the training loop
    sim_compute_s: float  # simulated on-device compute time


def run_local_update(
    model: nn.Module,
    device: DeviceProfile | None,
    shape: ModelShape,
    width: float,
    quant: QuantSettings,
    config: TrainConfig,
    train: WindowDataset,
    seed: int,
    head_epochs: int = 0,
) -> LocalResult:
    """Plan (`prepare_local_update`) and train one local update of ``model`` on ``train``.

    ``head_epochs > 0`` runs FedRep's schedule: the head alone first, then the body.

    Raises
    ------
    PlanDeclined
        When no plan at ``width`` fits the device.
    """
    update = prepare_local_update(model, device, shape, width, quant, config, train.x)
    started = time.perf_counter()
    x, y = train.x, train.y
    if head_epochs > 0:
        result = train_head_first(update.model, x, y, update.config, head_epochs, seed,
                                  update.step_hook)  # fmt: skip
    else:
        result = train_local(update.model, x, y, update.config, seed, update.step_hook)
    elapsed = time.perf_counter() - started
    state = update.model.state_dict()
    # Buffers (BatchNorm statistics) change in train mode even where parameters are frozen.
    parameters = {name for name, _ in update.model.named_parameters()}
    buffers = [name for name in state if name not in parameters]
    changed = tuple(state) if update.trainable is None else (*update.trainable, *buffers)
    return LocalResult(state, changed, result, elapsed, update.sim_compute_s)
