"""Memory benchmark: both memory models against their measurements, per model, plan and batch.

Run: ``python -m experiments.bench.memory [--length 128]``. Two tables:

- ``device`` (what the planner budgets, with int8/int4 weights and activations and fp32
  gradients and optimizer state, as MCU plans store them): activations saved for backward by
  the device model
  (``fedhar.device.engine_memory``) against a reference step that really stores them at the
  activation bits (``fedhar.device.reference_step``, counted with ``saved_tensors_hooks``), with
  the relative error of the reference step's gradients against the float step;
- ``torch-cpu``: the PyTorch-on-this-host estimate (``fedhar.device.memory``) against PyTorch's
  own saved tensors of a real fp32 step (weights, gradients, optimizer state included), and
  its peak against ``torch.profiler``'s peak of a real step (forward transients, kernel
  workspaces and backward buffers included), with oneDNN's kernels and with native ones.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch.nn import functional as F

from fedhar.device.engine_memory import estimate_device_memory
from fedhar.device.memory import (
    BitWidths,
    estimate_training_memory,
    measure_peak_bytes,
    measure_training_memory,
)
from fedhar.device.planner import TrainingPlan, trainable_names
from fedhar.device.reference_step import measure_device_step
from fedhar.models import MODEL_NAMES, build_model

PLANS = {
    "full": TrainingPlan("full", 0, 1, 1.0, peak_bytes=0),
    "last-layer": TrainingPlan("last_k", 1, 1, 1.0, peak_bytes=0),
    "bias-only": TrainingPlan("bias_only", 0, 1, 1.0, peak_bytes=0),
}


def float_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    trainable: list[str]) -> dict[str, torch.Tensor]:  # fmt: skip
    model = copy.deepcopy(model).train()
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def device_table(args: argparse.Namespace) -> None:
    shape = (args.channels, args.length)
    print("device model: saved activations, estimate vs reference step; gradient error vs fp32\n")
    print("| model | plan | batch | bits | estimated KiB | reference KiB | rel. error | "
          "grad error | est. peak KiB |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in MODEL_NAMES:
        model = build_model(name, args.channels, args.classes)
        for label, plan in PLANS.items():
            trainable = trainable_names(model, plan)
            for batch in args.batch_sizes:
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(batch, *shape, generator=gen)
                y = torch.randint(0, args.classes, (batch,), generator=gen)
                torch.manual_seed(1)
                reference = float_gradients(model, x, y, trainable)
                for bits in (8, 4):
                    torch.manual_seed(1)
                    saved, grads = measure_device_step(model, x, y, trainable, bits)
                    est = estimate_device_memory(model, batch, shape, trainable,
                                                 BitWidths(bits, bits))  # fmt: skip
                    diff = torch.cat([(grads[n] - reference[n]).flatten() for n in reference])
                    scale = torch.cat([g.flatten() for g in reference.values()]).norm()
                    print(
                        f"| {name} | {label} | {batch} | {bits} | "
                        f"{est.saved_activation_bytes / 1024:,.1f} | {saved / 1024:,.1f} | "
                        f"{est.saved_activation_bytes / saved - 1:+.1%} | "
                        f"{float(diff.norm() / scale):.2%} | {est.peak_bytes / 1024:,.1f} |"
                    )


def main(argv: list[str] | None = None) -> None:
    """Compare the analytic estimate with a saved-tensor measurement; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=9)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--length", type=int, default=128, help="samples per window")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device_table(args)
    torch_cpu_table(args)


def torch_cpu_table(args: argparse.Namespace) -> None:
    """The torch-cpu model against PyTorch: saved tensors, and the profiler's peak of a real
    step with oneDNN's kernels and with PyTorch's native ones."""
    shape = (args.channels, args.length)
    window = f"{args.channels}x{args.length}"
    print(f"\ntorch-cpu model: fp32, SGD momentum, windows of {window}; KiB = 1024 bytes; "
          "peak = torch.profiler allocations of a second step + resident tensors\n")  # fmt: skip
    print("| model | plan | batch | saved est. KiB | saved meas. KiB | rel. error | "
          "peak est. KiB (oneDNN) | profiler peak KiB (oneDNN) | rel. error | "
          "peak est. KiB (native) | profiler peak KiB (native) | rel. error |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in MODEL_NAMES:
        model = build_model(name, args.channels, args.classes)
        for label, plan in PLANS.items():
            trainable = trainable_names(model, plan)
            for batch in args.batch_sizes:
                est = estimate_training_memory(model, batch, shape, trainable)
                meas = measure_training_memory(model, batch, shape, trainable)
                cells = [
                    f"{est.comparable_bytes / 1024:,.1f}",
                    f"{meas.comparable_bytes / 1024:,.1f}",
                    f"{est.comparable_bytes / meas.comparable_bytes - 1:+.1%}",
                ]
                for onednn in (True, False):
                    peak = estimate_training_memory(
                        model, batch, shape, trainable, onednn=onednn
                    ).peak_bytes
                    profiled = measure_peak_bytes(model, batch, shape, trainable, onednn=onednn)
                    cells += [f"{peak / 1024:,.1f}", f"{profiled / 1024:,.1f}",
                              f"{peak / profiled - 1:+.1%}"]  # fmt: skip
                print(f"| {name} | {label} | {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
