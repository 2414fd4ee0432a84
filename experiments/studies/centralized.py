"""Centralized baseline: train one model on pooled data and report what federated runs chase.

Example::

    fedhar-central --dataset sp_sw_har --option devices=sp --model microbi_convlstm --epochs 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from fedhar.data import DATASET_NAMES, load_dataset
from fedhar.data.dataset import WindowDataset
from fedhar.data.splits import split_chronological, split_users
from fedhar.models import MODEL_NAMES, build_model, count_parameters
from fedhar.seeding import derive_seed, seed_everything
from fedhar.train import TrainConfig, evaluate, train_local


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with value parsed as JSON when it can be (numbers, lists, booleans)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def split(
    ds: WindowDataset, how: str, test_fraction: float, seed: int
) -> tuple[WindowDataset, WindowDataset]:
    if how == "users":
        return split_users(ds, test_fraction=test_fraction, seed=seed)
    return split_chronological(ds, test_fraction)


def run_centralized(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate each epoch, write results and plots into ``args.out``; return results."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(args.dataset, **dict(args.option))
    train, test = split(ds, args.split, args.test_fraction, args.seed)
    seed_everything(args.seed)
    model = build_model(args.model, ds.x.shape[1], ds.num_classes, args.width)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr)
    curve = []
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        result = train_local(model, train.x, train.y, config, derive_seed(args.seed, epoch))
        epoch_s = time.perf_counter() - started
        scores = evaluate(model, test.x, test.y, ds.num_classes)
        curve.append(
            {
                "epoch": epoch,
                "train_loss": result.mean_loss,
                "test_macro_f1": scores.macro_f1,
                "test_accuracy": scores.accuracy,
                "epoch_seconds": epoch_s,
            }
        )
    results = {
        "dataset": args.dataset,
        "options": dict(args.option),
        "model": args.model,
        "width": args.width,
        "parameters": count_parameters(model),
        "split": args.split,
        "train_windows": len(train),
        "test_windows": len(test),
        "test_users": sorted(set(test.user.tolist())) if args.split == "users" else None,
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        "class_names": list(ds.class_names),
        "confusion": scores.confusion.tolist(),
        "mean_epoch_seconds": float(np.mean([c["epoch_seconds"] for c in curve])),
        "curve": curve,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_confusion(scores.confusion, ds.class_names, out / "confusion.png")
    plot_curve(curve, out / "learning_curve.png")
    return results


def plot_confusion(confusion: np.ndarray, class_names: tuple[str, ...], path: Path) -> None:
    norm = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(class_names), 0.6 + 0.8 * len(class_names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if norm[i, j] > 0.5 else "black",
        )
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion (row-normalized colour)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curve(curve: list[dict[str, float]], path: Path) -> None:
    epochs = [c["epoch"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, [c["train_loss"] for c in curve], label="train loss", color="tab:red")
    ax.set(xlabel="epoch", ylabel="loss")
    twin = ax.twinx()
    twin.plot(epochs, [c["test_macro_f1"] for c in curve], label="test macro-F1")
    twin.set(ylabel="macro-F1", ylim=(0, 1))
    fig.legend(loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # leave room for the legend under the axes
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="synthetic")
    parser.add_argument(
        "--option",
        type=parse_option,
        action="append",
        default=[],
        help="dataset option key=value (repeatable), e.g. devices=sp",
    )
    parser.add_argument("--model", choices=MODEL_NAMES, default="microbi_convlstm")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--split", choices=("users", "chronological"), default="users")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/centralized")
    return parser


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    results = run_centralized(build_parser().parse_args(argv))
    print(
        json.dumps(
            {
                k: results[k]
                for k in (
                    "dataset",
                    "options",
                    "model",
                    "parameters",
                    "accuracy",
                    "macro_f1",
                    "mean_epoch_seconds",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
