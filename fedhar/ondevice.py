"""What a simulated wearable does around local training: its sensor, its SRAM plan, its QAT.

Everything here is a pure function of the device profile, the model and seeds, so a client
and the server agree on a device's capabilities without exchanging more than its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedhar.devices import DeviceProfile, training_budget_bytes
from fedhar.memory import BitWidths
from fedhar.planner import PlanDeclined, TrainingPlan, plan_training
from fedhar.quant import QuantConfig
from fedhar.sensors import SensorVariability, apply_sensor_model, draw_sensor_instance

WIDTH_LEVELS = (1.0, 0.75, 0.5, 0.25)  # widths partial-model strategies hand out


@dataclass(frozen=True)
class QuantSettings:
    """Quantization-aware local training; bit widths come from each device profile."""

    enabled: bool = True  # devices whose profile says 8 bits train with fake-quant
    qas: bool = True  # quantization-aware scaling of gradients (Lin et al. 2022)
    weight_bits: int | None = None  # override every device's weight bits (None: profile)
    activation_bits: int | None = None  # override every device's activation bits


@dataclass(frozen=True)
class ModelShape:
    """The model a federation trains, as the planner sees it."""

    name: str
    in_channels: int
    num_classes: int
    window_length: int


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
        model.name,
        model.in_channels,
        model.num_classes,
        model.window_length,
        training_budget_bytes(profile),
        bits=storage_bits(profile, settings),
        widths=(width,),
        flash_budget_bytes=profile.flash_bytes,
    )


def max_width(profile: DeviceProfile, model: ModelShape, settings: QuantSettings) -> float:
    """The widest level at which the device can update every parameter of the sub-model.

    Falls back to the widest level with any plan (last-k, bias-only), and 0.0 when not even
    the narrowest model fits.
    """
    fits: list[tuple[float, TrainingPlan]] = []
    for width in WIDTH_LEVELS:
        try:
            fits.append((width, plan_on_device(profile, model, width, settings)))
        except PlanDeclined:
            continue
    full = [width for width, plan in fits if plan.mode == "full"]
    return max(full or [width for width, _ in fits] or [0.0])


def record_with_device(
    windows: np.ndarray,  # (N, C, T)
    rate_hz: float,
    profile: DeviceProfile,
    variability: SensorVariability,
    device_seed: int,
    call_seed: int,
) -> np.ndarray:
    """The windows as this device instance would have recorded them; (N, C, T) float32."""
    if len(windows) == 0:
        return windows
    instance = draw_sensor_instance(profile, device_seed)
    return apply_sensor_model(windows, rate_hz, instance, variability, call_seed)
