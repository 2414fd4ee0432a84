"""Memory benchmark: estimated vs measured training-step bytes per model, batch and plan.

Run: ``python -m experiments.bench.memory [--length 128]``. The comparable bytes are weights,
gradients, optimizer state and tensors saved for backward (fp32, SGD momentum); the table also
shows the estimate's full peak, which adds working buffers and the input batch.
"""

from __future__ import annotations

import argparse

import torch

from fedhar.device.memory import estimate_training_memory, measure_training_memory
from fedhar.device.planner import TrainingPlan, trainable_names
from fedhar.models import MODEL_NAMES, build_model

PLANS = {
    "full": TrainingPlan("full", 0, 1, 1.0, peak_bytes=0),
    "last-layer": TrainingPlan("last_k", 1, 1, 1.0, peak_bytes=0),
    "bias-only": TrainingPlan("bias_only", 0, 1, 1.0, peak_bytes=0),
}


def main(argv: list[str] | None = None) -> None:
    """Compare the analytic estimate with a saved-tensor measurement; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=9)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--length", type=int, default=128, help="samples per window")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shape = (args.channels, args.length)
    print(f"fp32, SGD momentum, windows of {args.channels}x{args.length}; KiB = 1024 bytes\n")
    print("| model | plan | batch | estimated KiB | measured KiB | rel. error | est. peak KiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in MODEL_NAMES:
        model = build_model(name, args.channels, args.classes)
        for label, plan in PLANS.items():
            trainable = trainable_names(model, plan)
            for batch in args.batch_sizes:
                est = estimate_training_memory(model, batch, shape, trainable)
                meas = measure_training_memory(model, batch, shape, trainable)
                error = est.comparable_bytes / meas.comparable_bytes - 1
                print(
                    f"| {name} | {label} | {batch} | {est.comparable_bytes / 1024:,.1f} | "
                    f"{meas.comparable_bytes / 1024:,.1f} | {error:+.1%} | "
                    f"{est.peak_bytes / 1024:,.1f} |"
                )


if __name__ == "__main__":
    main()
