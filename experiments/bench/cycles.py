"""The cycle model (`fedhar.device.costs.compute_seconds`) against published MCU latencies.

Run: ``python -m experiments.bench.cycles``. It prints every published int8 inference latency
of a reference network on a core of the device catalogue next to the latency the catalogue
predicts for it, and per core the MAC rate that reproduces each latency: the catalogue's
``macs_per_cycle`` is the median of those rates (non-MAC operations at ``CYCLES_PER_OP``).

References:

- Cortex-M4F and Cortex-M7: MLPerf Tiny's keyword-spotting benchmark (Banbury et al., "MLPerf
  Tiny Benchmark", NeurIPS Datasets and Benchmarks, 2021), every closed-division submission
  on those cores in rounds v0.5-v1.3: the median throughput of
  ``closed/<submitter>/results/<system>/kws/performance/results.txt`` (``performance_results.txt``
  for v0.7 plumerai) and the clock of ``closed/<submitter>/systems/<system>.json`` in
  github.com/mlcommons/tiny_results_v<round>. Every submission counts, resubmissions too (v1.1
  Krai and cTuning repeat OctoML's v1.0 microTVM figures; without the repeats the Cortex-M4F
  median is 0.309 rather than 0.304), and most Cortex-M4F figures are one board
  (NUCLEO-L4R5ZI), so the median leans towards that board's stacks.
  The network is the reference DS-CNN (input 49x10x1; a 10x4 stride-2 convolution to 64
  channels, four depthwise-separable 3x3 blocks of 64 channels, average pooling, a 64 -> 12
  dense layer; 2,656,768 MACs).
- Xtensa LX6 (ESP32) and LX7 (ESP32-S3): MLPerf Tiny has no Xtensa entry. Espressif's
  esp-tflite-micro README ("Performance Comparison", github.com/espressif/esp-tflite-micro)
  gives the `invoke()` time of TFLite Micro's person-detection example with ESP-NN kernels at
  240 MHz: 380 ms (ESP32), 54 ms (ESP32-S3). That network is MobileNetV1 with width 0.25 on
  96x96 grayscale images (7,157,888 MACs; 7,489,664 with MLPerf Tiny's 3-channel input).

Held out of the calibration, ``HELD_OUT`` holds MLPerf Tiny's visual wake words results on the
same cores (MobileNetV1 0.25 on 96x96x3, from the same results files under ``vww/``): the
bench prints how well the rates calibrated on keyword spotting predict them.

``PUBLISHED_OPS`` checks the assumed cycles per non-MAC operation (``CYCLES_PER_OP``, one table
for every core) against the only per-kernel figures found for a catalogue core: the ESP-NN
README's table of cycles per kernel on the ESP32-S3 at 240 MHz (github.com/espressif/esp-nn,
the table of commit 0c3d783e, unchanged to v1.2.0; shapes from its ``tests/src``, one call per
kernel). Its
optimized kernels stand for the Xtensa LX7; its C kernels, which the ESP32 runs for pooling
and activations, stand for the LX6, although they were measured on the LX7. The bench prints
how far the table is from them, and what the published costs would do to a core's calibrated
MAC rate and to a DS-CNN training step. No per-kernel figure was found for Cortex-M cores.

The networks' forward ops are counted on PyTorch replicas (MACs by torch's own FLOP counter,
independent of fedhar's layer counts). A whole inference includes what the cycle model leaves
out (memory traffic, flash wait states, kernel overheads), so a calibrated rate is an
end-to-end rate. The figures are of inference engines; training kernels (backward passes, no
vendor tuning) are unlikely to be faster, so simulated training times lean short.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache, partial
from statistics import median

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from experiments.compose import CONFIG_DIR
from fedhar.device.costs import CYCLES_PER_OP, compute_seconds, training_ops
from fedhar.device.profiles import DeviceProfile, load_catalogue
from fedhar.models import build_model
from fedhar.models.ops import OpCounts
from fedhar.quant.qat import QuantConfig, prepare_qat

KWS_MACS = 2_656_768  # from the reference model's layer shapes (kws_ref_model.tflite)
VWW_MACS = 7_489_664  # the same MobileNetV1 0.25 on 96x96x3 input, counted layer by layer


@dataclass(frozen=True)
class Published:
    """One platform's published median int8 inference latency of a reference network."""

    core: str  # the catalogue's `core`
    network: str  # a key of NETWORKS
    source: str  # round and submitter, or the document
    system: str  # board and inference stack
    clock_hz: float  # the benchmark board's clock
    latency_s: float


def _mlperf(
    network: str,
    core: str,
    round_: str,
    submitter: str,
    board: str,
    mhz: int,
    stack: str,
    per_s: float,
) -> Published:
    """An MLPerf Tiny result: `per_s` is the results file's median throughput (inferences/s)."""
    return Published(
        core, network, f"MLPerf Tiny {round_} {submitter}", f"{board}, {stack}", mhz * 1e6,
        1 / per_s,
    )  # fmt: skip


M4F, M7 = "cortex-m4f", "cortex-m7"
_kws, _vww = partial(_mlperf, "kws"), partial(_mlperf, "vww")

PUBLISHED = (
    _kws(M4F, "v0.5", "reference", "Nucleo-L4R5ZI", 120, "TFLM 2.3.1 + CMSIS-NN", 5.497),
    _kws(M4F, "v0.7", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI", 10.241),
    _kws(M4F, "v0.7", "plumerai", "NUCLEO-L4R5ZI", 120, "Plumerai", 13.597),
    _kws(M4F, "v0.7", "plumerai", "CY8CPROTO-062-4343W", 150, "Plumerai", 15.707),
    _kws(M4F, "v1.0", "OctoML", "NUCLEO-L4R5ZI", 120, "microTVM + CMSIS-NN", 10.019),
    _kws(M4F, "v1.0", "OctoML", "NUCLEO-L4R5ZI", 120, "microTVM native", 6.943),
    _kws(M4F, "v1.0", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI", 13.323),
    _kws(M4F, "v1.0", "plumerai", "NUCLEO-L4R5ZI", 120, "Plumerai", 13.955),
    _kws(M4F, "v1.0", "plumerai", "CY8CPROTO-062-4343W", 150, "Plumerai", 16.287),
    _kws(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "microTVM + CMSIS-NN", 10.019),
    _kws(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "microTVM native", 6.943),
    _kws(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 7.3", 13.381),
    _kws(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 8.0", 13.759),
    _kws(M4F, "v1.1", "Nuvoton", "NuMaker-M467HJ", 200, "ONNC", 21.652),
    _kws(M4F, "v1.1", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 8.1", 15.905),
    _kws(M4F, "v1.1", "Skymizer", "NUCLEO-L4R5ZI", 120, "ONNC, Mbed OS", 12.195),
    _kws(M4F, "v1.1", "Skymizer", "NUCLEO-L4R5ZI", 120, "ONNC, Zephyr", 10.679),
    _kws(M4F, "v1.1", "bosch", "NUCLEO-L4R5ZI", 120, "Bosch HALE 1.0", 15.954),
    _kws(M4F, "v1.1", "cTuning", "NUCLEO-L4R5ZI", 120, "microTVM + CMSIS-NN", 10.016),
    _kws(M4F, "v1.1", "cTuning", "NUCLEO-L4R5ZI", 120, "microTVM native", 6.943),
    _kws(M4F, "v1.1", "plumerai", "CY8CPROTO-062-4343W", 150, "Plumerai 2023.05", 18.497),
    _kws(M4F, "v1.1", "plumerai", "NUCLEO-L4R5ZI", 120, "Plumerai 2023.05", 20.929),
    _kws(M4F, "v1.2", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 9.0", 23.155),
    _kws(M4F, "v1.2", "bosch", "CY8CPROTO-062-4343W", 150, "Bosch HALE 1.0.175", 18.466),
    _kws(M4F, "v1.2", "bosch", "NUCLEO-L4R5ZI", 120, "Bosch HALE 1.0.175", 16.623),
    _kws(M4F, "v1.3", "ST", "NUCLEO-L4R5ZI-P", 120, "X-CUBE-AI 10.2", 23.032),
    _kws(M7, "v0.7", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI", 44.863),
    _kws(M7, "v0.7", "plumerai", "DISCO-F746NG", 216, "Plumerai", 51.139),
    _kws(M7, "v1.0", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI", 59.667),
    _kws(M7, "v1.0", "plumerai", "DISCO-F746NG", 216, "Plumerai", 52.288),
    _kws(M7, "v1.1", "Krai", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 7.3", 59.788),
    _kws(M7, "v1.1", "Krai", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 8.0", 60.988),
    _kws(M7, "v1.1", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 8.1", 65.133),
    _kws(M7, "v1.1", "bosch", "DISCO-F746NG", 216, "Bosch HALE 1.0", 54.293),
    _kws(M7, "v1.1", "bosch", "NUCLEO-H7A3ZI", 280, "Bosch HALE 1.0", 67.956),
    _kws(M7, "v1.1", "plumerai", "DISCO-F746NG", 216, "Plumerai 2023.05", 56.341),
    _kws(M7, "v1.1", "plumerai", "NUCLEO-H7A3ZI-Q", 280, "Plumerai 2023.05", 72.141),
    _kws(M7, "v1.2", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 9.0", 88.356),
    _kws(M7, "v1.2", "bosch", "DISCO-F746NG", 216, "Bosch HALE 1.0.175", 52.746),
    _kws(M7, "v1.2", "bosch", "NUCLEO-H7A3ZI", 280, "Bosch HALE 1.0.175", 68.083),
    Published("xtensa-lx6", "person_detection", "esp-tflite-micro README",
              "ESP32, TFLite Micro + ESP-NN", 240e6, 0.380),
    Published("xtensa-lx7", "person_detection", "esp-tflite-micro README",
              "ESP32-S3, TFLite Micro + ESP-NN", 240e6, 0.054),
)  # fmt: skip


# Held out of the calibration: MLPerf Tiny's visual wake words results (MobileNetV1 0.25 on
# 96x96x3) on the same cores, from the same results files under vww/, to check that a rate
# calibrated on one network carries to another.
HELD_OUT = (
    _vww(M4F, "v0.5", "reference", "Nucleo-L4R5ZI", 120, "TFLM 2.3.1 + CMSIS-NN", 1.665),
    _vww(M4F, "v0.7", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI", 3.927),
    _vww(M4F, "v0.7", "plumerai", "NUCLEO-L4R5ZI", 120, "Plumerai", 4.537),
    _vww(M4F, "v0.7", "plumerai", "CY8CPROTO-062-4343W", 150, "Plumerai", 5.000),
    _vww(M4F, "v1.0", "OctoML", "NUCLEO-L4R5ZI", 120, "microTVM + CMSIS-NN", 3.32),
    _vww(M4F, "v1.0", "OctoML", "NUCLEO-L4R5ZI", 120, "microTVM native", 2.971),
    _vww(M4F, "v1.0", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI", 4.339),
    _vww(M4F, "v1.0", "plumerai", "NUCLEO-L4R5ZI", 120, "Plumerai", 4.795),
    _vww(M4F, "v1.0", "plumerai", "CY8CPROTO-062-4343W", 150, "Plumerai", 5.196),
    _vww(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "microTVM + CMSIS-NN", 3.324),
    _vww(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "microTVM native", 2.951),
    _vww(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 7.3", 4.446),
    _vww(M4F, "v1.1", "Krai", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 8.0", 4.522),
    _vww(M4F, "v1.1", "Nuvoton", "NuMaker-M467HJ", 200, "ONNC", 10.129),
    _vww(M4F, "v1.1", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 8.1", 8.425),
    _vww(M4F, "v1.1", "Skymizer", "NUCLEO-L4R5ZI", 120, "ONNC, Mbed OS", 5.808),
    _vww(M4F, "v1.1", "Skymizer", "NUCLEO-L4R5ZI", 120, "ONNC, Zephyr", 5.056),
    _vww(M4F, "v1.1", "bosch", "NUCLEO-L4R5ZI", 120, "Bosch HALE 1.0", 5.533),
    _vww(M4F, "v1.1", "plumerai", "CY8CPROTO-062-4343W", 150, "Plumerai 2023.05", 9.234),
    _vww(M4F, "v1.1", "plumerai", "NUCLEO-L4R5ZI", 120, "Plumerai 2023.05", 10.126),
    _vww(M4F, "v1.2", "ST", "NUCLEO-L4R5ZI", 120, "X-CUBE-AI 9.0", 11.245),
    _vww(M4F, "v1.2", "bosch", "CY8CPROTO-062-4343W", 150, "Bosch HALE 1.0.175", 6.465),
    _vww(M4F, "v1.2", "bosch", "NUCLEO-L4R5ZI", 120, "Bosch HALE 1.0.175", 5.54),
    _vww(M4F, "v1.3", "ST", "NUCLEO-L4R5ZI-P", 120, "X-CUBE-AI 10.2", 11.181),
    _vww(M7, "v0.7", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI", 15.533),
    _vww(M7, "v0.7", "plumerai", "DISCO-F746NG", 216, "Plumerai", 16.836),
    _vww(M7, "v1.0", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI", 19.722),
    _vww(M7, "v1.0", "plumerai", "DISCO-F746NG", 216, "Plumerai", 17.535),
    _vww(M7, "v1.1", "Krai", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 7.3", 19.838),
    _vww(M7, "v1.1", "Krai", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 8.0", 19.867),
    _vww(M7, "v1.1", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 8.1", 33.751),
    _vww(M7, "v1.1", "bosch", "DISCO-F746NG", 216, "Bosch HALE 1.0", 17.49),
    _vww(M7, "v1.1", "bosch", "NUCLEO-H7A3ZI", 280, "Bosch HALE 1.0", 22.906),
    _vww(M7, "v1.1", "plumerai", "DISCO-F746NG", 216, "Plumerai 2023.05", 29.343),
    _vww(M7, "v1.1", "plumerai", "NUCLEO-H7A3ZI-Q", 280, "Plumerai 2023.05", 37.29),
    _vww(M7, "v1.2", "ST", "NUCLEO-H7A3ZI-Q", 280, "X-CUBE-AI 9.0", 42.009),
    _vww(M7, "v1.2", "bosch", "DISCO-F746NG", 216, "Bosch HALE 1.0.175", 17.468),
    _vww(M7, "v1.2", "bosch", "NUCLEO-H7A3ZI", 280, "Bosch HALE 1.0.175", 22.85),
)  # fmt: skip


@dataclass(frozen=True)
class PublishedOp:
    """A published cycle count of one int8 kernel that does one kind of non-MAC operation."""

    core: str  # the catalogue's `core` it stands for
    kind: str  # the `CYCLES_PER_OP` kind the kernel's operations are priced as
    kernel: str  # what ran, and on which shape
    cycles: int
    operations: int  # operations of `kind` in the kernel, counted as the cycle model does

    @property
    def cycles_per_op(self) -> float:
        """Published cycles per operation."""
        return self.cycles / self.operations


LX6, LX7 = "xtensa-lx6", "xtensa-lx7"
POOL_OUTPUTS = 16 * 16 * 16  # 3x3 windows, stride 1, padding 1 over 16x16x16
POOL_TAPS = 16 * 46 * 46  # valid taps: 46 x 46 per channel, padded ones left out
POOL_COMPARES = POOL_TAPS - POOL_OUTPUTS  # a window of n taps takes n - 1 compares
RELU6_COMPARES = 2 * 1_615  # a clamp of 1,615 values: a max and a min each
MUL_VALUES = 1_615

# ESP-NN's kernel table (ESP32-S3 at 240 MHz, cycles of one call): optimized kernels for the
# LX7; the same kernels' C versions, which the ESP32 (LX6) runs, for the LX6. Upper bounds:
# average pooling also divides and clamps each output; the multiply requantizes each product
# once but also loads, offsets and clamps.
PUBLISHED_OPS = (
    PublishedOp(LX7, "compares", "max pool 3x3, 16x16x16, optimized", 76_747, POOL_COMPARES),
    PublishedOp(LX7, "compares", "relu6 on 1,615 values, optimized", 1_856, RELU6_COMPARES),
    PublishedOp(LX7, "elementwise", "avg pool 3x3, 16x16x16 (adds), optimized", 160_580,
                POOL_TAPS),
    PublishedOp(LX7, "requantize", "elementwise mul, optimized", 30_950, MUL_VALUES),
    PublishedOp(LX6, "compares", "max pool 3x3, 16x16x16, C", 485_714, POOL_COMPARES),
    PublishedOp(LX6, "compares", "relu6 on 1,615 values, C", 18_315, RELU6_COMPARES),
    PublishedOp(LX6, "elementwise", "avg pool 3x3, 16x16x16 (adds), C", 541_462, POOL_TAPS),
    PublishedOp(LX6, "requantize", "elementwise mul, C", 122_046, MUL_VALUES),
)  # fmt: skip
BOUNDS_ONLY = ("elementwise", "requantize")  # kinds whose published figure only bounds the cost

# the training step the sensitivity is shown on: the partial-model study's DS-CNN on the
# synthetic data's windows (6 IMU channels, 128 samples, 7 classes), int8, every parameter
TRAINING_STEP = ("dscnn", 6, 7, 128)


def kws_dscnn() -> nn.Sequential:
    """A PyTorch replica of MLPerf Tiny's KWS DS-CNN (BatchNorm folded, as in the int8 model)."""
    layers: list[nn.Module] = [nn.Conv2d(1, 64, (10, 4), stride=2, padding=(5, 1)), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU()]
        layers += [nn.Conv2d(64, 64, 1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12)]
    return nn.Sequential(*layers)


MOBILENET_BLOCKS = ((8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2),
                    *((128, 128, 1),) * 5, (128, 256, 2), (256, 256, 1))  # fmt: skip


def person_detection_mobilenet(in_channels: int = 1) -> nn.Sequential:
    """A PyTorch replica of TFLite Micro's person-detection network: MobileNetV1 at width 0.25
    on 96x96 images, a 3x3 stride-2 stem to 8 channels, 13 depthwise-separable blocks, average
    pooling and a 256 -> 2 classifier (BatchNorm folded; ReLU6 as ReLU, one compare each)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU()]
    for cin, cout, stride in MOBILENET_BLOCKS:
        layers += [nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin), nn.ReLU()]
        layers += [nn.Conv2d(cin, cout, 1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 2)]
    return nn.Sequential(*layers)


NETWORKS: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...]]] = {
    "kws": (kws_dscnn, (1, 1, 49, 10)),
    "person_detection": (person_detection_mobilenet, (1, 1, 96, 96)),
    "vww": (partial(person_detection_mobilenet, in_channels=3), (1, 3, 96, 96)),
}


def inference_ops(network: str) -> OpCounts:
    """Forward ops of one int8 inference of a reference network: MACs, a requantization per
    convolution or dense output, a compare per ReLU output and an add per pooled input."""
    return replace(_traced_ops(network))  # a copy: the traced counts are shared


@cache
def _traced_ops(network: str) -> OpCounts:
    """`inference_ops`, traced once per network."""
    build, shape = NETWORKS[network]
    model, x = build().eval(), torch.zeros(shape)
    ops = OpCounts()

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d | nn.Linear):
            ops.requantize += output.numel()
        elif isinstance(module, nn.ReLU):
            ops.compares += output.numel()
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            ops.elementwise += inputs[0].numel()

    for layer in model:
        layer.register_forward_hook(hook)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        model(x)
    ops.macs = flops.get_total_flops() // 2
    return ops


def non_mac_cycles(ops: OpCounts, costs: Mapping[str, float]) -> float:
    """Cycles of the non-MAC operations of ``ops`` at ``costs`` per operation of each kind."""
    return sum(getattr(ops, kind) * per_op for kind, per_op in costs.items())


def implied_macs_per_cycle(
    entry: Published, ops: OpCounts, costs: Mapping[str, float] = CYCLES_PER_OP
) -> float:
    """The MAC rate at which `compute_seconds` reproduces the published latency, with the
    non-MAC operations at ``costs`` (cycles per operation of each kind)."""
    mac_cycles = entry.latency_s * entry.clock_hz - non_mac_cycles(ops, costs)
    if mac_cycles <= 0:
        raise ValueError(f"{entry.system}: the non-MAC cycles alone exceed the published latency")
    return ops.macs / mac_cycles


def implied_rates() -> dict[str, list[float]]:
    """Per core, the implied MAC rate of each of its published latencies, in PUBLISHED order."""
    ops = {network: inference_ops(network) for network in NETWORKS}
    rates: dict[str, list[float]] = {}
    for entry in PUBLISHED:
        rates.setdefault(entry.core, []).append(implied_macs_per_cycle(entry, ops[entry.network]))
    return rates


def calibrated_rates() -> dict[str, float]:
    """Per core, the median implied MAC rate over its published latencies."""
    return {core: median(rates) for core, rates in implied_rates().items()}


def held_out_ratios(mcus: Iterable[DeviceProfile]) -> dict[str, list[float]]:
    """Per core, published / predicted latency of each held-out figure (1: exact), with the
    rates of the microcontrollers `mcus` (the devices of a core share its rate)."""
    device_of_core = {p.core: p for p in mcus}
    ratios: dict[str, list[float]] = {}
    for entry in HELD_OUT:
        ops = inference_ops(entry.network)
        predicted = predicted_latency_s(device_of_core[entry.core], entry, ops)
        ratios.setdefault(entry.core, []).append(entry.latency_s / predicted)
    return ratios


def published_op_costs(core: str) -> dict[str, float]:
    """`CYCLES_PER_OP` with each kind that `PUBLISHED_OPS` measures on ``core`` replaced by the
    median of its published figures, bounds left out."""
    costs = dict(CYCLES_PER_OP)
    for kind in costs:
        figures = [
            op.cycles_per_op
            for op in PUBLISHED_OPS
            if op.core == core and op.kind == kind and kind not in BOUNDS_ONLY
        ]
        if figures:
            costs[kind] = median(figures)
    return costs


def training_step_ops() -> OpCounts:
    """Ops of one int8 training step of `TRAINING_STEP` on one window, every parameter
    trained."""
    return replace(_traced_training_step())  # a copy: the traced counts are shared


@cache
def _traced_training_step() -> OpCounts:
    """`training_step_ops`, traced once."""
    name, channels, classes, length = TRAINING_STEP
    model = prepare_qat(build_model(name, channels, classes), QuantConfig())
    return training_ops(model, channels, length, None)


@dataclass(frozen=True)
class Sensitivity:
    """What a core's published non-MAC costs would change, against `CYCLES_PER_OP`."""

    macs_per_cycle: float  # the median implied rate, with the published costs
    training_step_ratio: float  # a step's time with them / with CYCLES_PER_OP, each calibrated


def op_cost_sensitivity(profile: DeviceProfile) -> Sensitivity:
    """Recalibrate ``profile``'s core with its published non-MAC costs and time a training step
    (`training_step_ops`) against the core calibrated with `CYCLES_PER_OP`: the same published
    latencies, split differently between MACs and the rest."""
    step = training_step_ops()

    def calibrated(costs: Mapping[str, float]) -> tuple[float, float]:
        rate = median(
            implied_macs_per_cycle(entry, inference_ops(entry.network), costs)
            for entry in PUBLISHED
            if entry.core == profile.core
        )
        return rate, step.macs / rate + non_mac_cycles(step, costs)

    rate, published = calibrated(published_op_costs(profile.core))
    return Sensitivity(rate, published / calibrated(CYCLES_PER_OP)[1])


def predicted_latency_s(profile: DeviceProfile, entry: Published, ops: OpCounts) -> float:
    """The catalogue's latency for a published figure: `profile` at the benchmark's clock."""
    return compute_seconds(replace(profile, clock_hz=entry.clock_hz), ops)


def main(argv: list[str] | None = None) -> None:
    """Print the catalogue's latency per published figure, and per core its calibration."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    catalogue = load_catalogue(CONFIG_DIR / "fleet" / "devices" / "catalogue.yaml")
    mcus = [p for p in catalogue.values() if p.kind == "mcu"]
    # the devices of a core share its calibrated rate (tests check it), so one stands for all
    device_of_core = {p.core: p for p in mcus}
    ops = {network: inference_ops(network) for network in NETWORKS}
    for network, counts in ops.items():
        print(
            f"{network}: {counts.macs:,} MACs, {counts.requantize:,} requantizations, "
            f"{counts.compares:,} compares, {counts.elementwise:,} adds per inference"
        )
    print("\n| core | source | system | MHz | published ms | catalogue ms | published / "
          "catalogue | implied MACs/cycle |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for entry in PUBLISHED:
        counts = ops[entry.network]
        model_s = predicted_latency_s(device_of_core[entry.core], entry, counts)
        implied = implied_macs_per_cycle(entry, counts)
        print(
            f"| {entry.core} | {entry.source} | {entry.system} | {entry.clock_hz / 1e6:g} | "
            f"{entry.latency_s * 1e3:.1f} | {model_s * 1e3:.1f} | "
            f"{entry.latency_s / model_s:.2f} | {implied:.3f} |"
        )
    print("\n| core | catalogue devices (MACs/cycle) | median implied MACs/cycle | range |")
    print("|---|---|---:|---|")
    for core, rates in implied_rates().items():
        devices = ", ".join(f"{p.name} ({p.macs_per_cycle:g})" for p in mcus if p.core == core)
        print(f"| {core} | {devices} | {median(rates):.3f} | {min(rates):.3f}-{max(rates):.3f} "
              f"({len(rates)} published) |")  # fmt: skip
    print("\nHeld out (visual wake words, not used to calibrate): published / catalogue latency")
    print("\n| core | median | range | figures |")
    print("|---|---:|---|---:|")
    for core, ratios in held_out_ratios(mcus).items():
        print(f"| {core} | {median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} | "
              f"{len(ratios)} |")  # fmt: skip
    print(
        "\nNon-MAC costs: published cycles per operation against CYCLES_PER_OP (ESP-NN, ESP32-S3)"
    )
    print("\n| core | kind | kernel | published cycles/op | CYCLES_PER_OP | published / assumed |")
    print("|---|---|---|---:|---:|---:|")
    for op in PUBLISHED_OPS:
        assumed = CYCLES_PER_OP[op.kind]
        bound = " (bound)" if op.kind in BOUNDS_ONLY else ""
        print(f"| {op.core} | {op.kind} | {op.kernel} | {op.cycles_per_op:.2f}{bound} | "
              f"{assumed:g} | {op.cycles_per_op / assumed:.2f} |")  # fmt: skip
    print("\nWith the published compare costs (the bounds and nonlinear as assumed):")
    print("\n| core | catalogue MACs/cycle | recalibrated | DS-CNN int8 training step, "
          "published / assumed costs |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for core in sorted({op.core for op in PUBLISHED_OPS}):
        profile = device_of_core[core]
        result = op_cost_sensitivity(profile)
        print(f"| {core} | {profile.macs_per_cycle:g} | {result.macs_per_cycle:.3f} | "
              f"{result.training_step_ratio:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
