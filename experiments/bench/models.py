"""Model benchmark: parameters, MACs per window and time per training epoch on this machine.

Run: ``python -m experiments.bench.models [--windows 6000] [--channels 6] [--length 100]``.
Prints a markdown table; the headline is each model's epoch time relative to the smallest
model (fewest parameters).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from fedhar.models import MODEL_NAMES, build_model, count_macs, count_parameters


def time_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Seconds for one SGD-momentum epoch over ``x`` ``(N, C, T)`` in mini-batches."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Benchmark every bundled model and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=6000, help="windows per epoch")
    parser.add_argument("--channels", type=int, default=6, help="channels of the timed windows")
    parser.add_argument("--length", type=int, default=100, help="samples per timed window")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.windows, args.channels, args.length, generator=gen)  # (N, C, T)
    y = torch.randint(0, 6, (args.windows,), generator=gen)
    rows = []
    for name in MODEL_NAMES:
        torch.manual_seed(args.seed)
        reference = build_model(name, 9, 6)  # sizes reported at 9 channels, 6 classes
        timed = build_model(name, args.channels, 6)
        rows.append(
            (
                name,
                count_parameters(reference),
                count_macs(reference, 9, args.length),
                time_epoch(timed, x, y, args.batch_size),
            )
        )
    smallest = min(rows, key=lambda r: r[1])
    print(
        f"{args.windows} windows of {args.channels}x{args.length}, batch {args.batch_size}, "
        f"{args.threads} thread(s); params and MACs at 9 channels, 6 classes, T={args.length}\n"
    )
    print(f"| model | params | MACs / window | epoch (s) | x {smallest[0]} |")
    print("|---|---:|---:|---:|---:|")
    for name, params, macs, seconds in rows:
        print(f"| {name} | {params:,} | {macs:,} | {seconds:.2f} | {seconds / smallest[3]:.1f}x |")


if __name__ == "__main__":
    main()
