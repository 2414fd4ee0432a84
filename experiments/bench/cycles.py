"""The cycle model (`fedhar.device.costs.compute_seconds`) against published MCU latencies.

Run: ``python -m experiments.bench.cycles``. The reference is MLPerf Tiny's keyword-spotting
benchmark: its reference DS-CNN (int8, input 49x10x1; a 10x4 stride-2 convolution to 64
channels, four depthwise-separable 3x3 blocks of 64 channels, average pooling, a 64 -> 12
dense layer; 2,656,768 MACs), whose median inference latency the MLPerf Tiny results report
per platform:

- v0.5, closed/reference/results/Nucleo-L4R5ZI/kws/performance/results.txt
  (github.com/mlcommons/tiny_results_v0.5): "Median throughput is 5.497 inf./sec.",
  TensorFlow Lite Micro 2.3.1 with CMSIS-NN kernels, Cortex-M4 at 120 MHz;
- v1.0, closed/OctoML/results/microtvm_cmsis_nn/NUCLEO_L4R5ZI/kws/performance/results.txt
  (github.com/mlcommons/tiny_results_v1.0): "Median throughput is 10.019 inf./sec.",
  microTVM with CMSIS-NN kernels, the same board.

Citation: Banbury et al., "MLPerf Tiny Benchmark", NeurIPS Datasets and Benchmarks, 2021.

The model's forward ops are counted on a PyTorch replica of the network (MACs by torch's own
FLOP counter, independent of fedhar's layer counts), and the catalogue's core is run at the
benchmark board's clock. A whole inference includes what the model leaves out (memory
traffic, flash wait states, kernel overheads), so the table reads as how optimistic the
catalogue's sustained MAC rate is for int8 inference on that core.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from experiments.compose import CONFIG_DIR
from fedhar.device.costs import compute_seconds
from fedhar.device.profiles import load_catalogue
from fedhar.models.ops import OpCounts

KWS_MACS = 2_656_768  # from the reference model's layer shapes (kws_ref_model.tflite)


@dataclass(frozen=True)
class Published:
    """One platform's measured median inference latency of the KWS DS-CNN."""

    label: str
    device: str  # a catalogue entry with the same core (the nRF52840 is a Cortex-M4F)
    clock_hz: float  # the benchmark board's clock
    inferences_per_s: float


PUBLISHED = (
    Published("Cortex-M4 120 MHz, TFLite Micro + CMSIS-NN (v0.5 reference)", "nrf52840",
              120e6, 5.497),
    Published("Cortex-M4 120 MHz, microTVM + CMSIS-NN (v1.0 OctoML)", "nrf52840", 120e6,
              10.019),
)  # fmt: skip


def kws_dscnn() -> nn.Sequential:
    """A PyTorch replica of MLPerf Tiny's KWS DS-CNN (BatchNorm folded, as in the int8 model)."""
    layers: list[nn.Module] = [nn.Conv2d(1, 64, (10, 4), stride=2, padding=(5, 1)), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.ReLU()]
        layers += [nn.Conv2d(64, 64, 1), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12)]
    return nn.Sequential(*layers)


def kws_inference_ops() -> OpCounts:
    """Forward ops of one int8 inference: MACs, a requantization per convolution or dense
    output, a compare per ReLU output and an add per pooled input."""
    model, x = kws_dscnn().eval(), torch.zeros(1, 1, 49, 10)
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


def main(argv: list[str] | None = None) -> None:
    """Print the model's KWS latency per platform against the published one."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    ops = kws_inference_ops()
    catalogue = load_catalogue(CONFIG_DIR / "fleet" / "devices" / "catalogue.yaml")
    print(f"KWS DS-CNN: {ops.macs:,} MACs, {ops.requantize:,} requantizations, "
          f"{ops.compares:,} compares, {ops.elementwise:,} adds per inference\n")  # fmt: skip
    print("| platform | catalogue core (MACs/cycle) | model ms | published ms | "
          "published / model | published MACs/cycle |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for entry in PUBLISHED:
        profile = replace(catalogue[entry.device], clock_hz=entry.clock_hz)
        model_s = compute_seconds(profile, ops)
        measured_s = 1 / entry.inferences_per_s
        rate = ops.macs / (measured_s * entry.clock_hz)
        print(f"| {entry.label} | {entry.device} ({profile.macs_per_cycle:g}) | "
              f"{model_s * 1e3:.1f} | {measured_s * 1e3:.1f} | {measured_s / model_s:.2f}x | "
              f"{rate:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
