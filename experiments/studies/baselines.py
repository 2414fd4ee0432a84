"""Centralized baselines on unseen users: sp-sw-har (phone, watch, both) and synthetic data.

Each cell trains on pooled windows of the training users and scores the held-out users that a
federated run with the same seed and ``federation.holdout_fraction`` evaluates on the server.
Dataset options come from ``configs/dataset/`` so both runs read the same windows.

Example::

    FEDHAR_DATA_DIR=../shared/data python -m experiments.studies.baselines --epochs 30 \
        --out /tmp/bl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from experiments.compose import load_config
from experiments.studies.centralized import build_parser as build_central_parser
from experiments.studies.centralized import run_centralized
from fedhar.models import MODEL_NAMES

# (label, dataset config group, option overrides on top of configs/dataset/<group>.yaml)
GRID: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("sp-sw-har phone", "sp_sw_har", {"devices": "sp"}),
    ("sp-sw-har watch", "sp_sw_har", {"devices": "sw"}),
    ("sp-sw-har both", "sp_sw_har", {"devices": "both"}),
    ("synthetic", "synthetic", {}),
)
LAST_EPOCHS = 5  # epochs averaged to show whether the final score is stable


def dataset_options(group: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Resolved options of ``configs/dataset/<group>.yaml`` at ``seed``, with ``overrides``."""
    cfg = load_config([f"dataset={group}", f"seed={seed}"])
    options = OmegaConf.to_container(cfg.dataset.options, resolve=True)
    assert isinstance(options, dict)
    return {str(k): v for k, v in options.items()} | overrides


def run_cell(
    label: str, group: str, overrides: dict[str, Any], model: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Train and score one (dataset, model) cell in ``args.out/<group>-<devices>-<model>``."""
    name = "-".join([group, *(str(v) for v in overrides.values()), model])
    central = build_central_parser().parse_args(
        [
            "--dataset", group,
            "--model", model,
            "--split", "users",
            "--test-fraction", str(args.test_fraction),
            "--epochs", str(args.epochs),
            "--seed", str(args.seed),
            "--out", str(Path(args.out) / name),
        ]
    )  # fmt: skip
    central.option = list(dataset_options(group, args.seed, overrides).items())
    results = run_centralized(central)
    last = results["curve"][-LAST_EPOCHS:]
    return {
        "data": label,
        "model": model,
        "parameters": results["parameters"],
        "train_windows": results["train_windows"],
        "test_windows": results["test_windows"],
        "test_users": results["test_users"],
        "accuracy": results["accuracy"],
        "macro_f1": results["macro_f1"],
        "macro_f1_last": float(np.mean([c["test_macro_f1"] for c in last])),
        "macro_f1_last_std": float(np.std([c["test_macro_f1"] for c in last])),
        "epoch_seconds": results["mean_epoch_seconds"],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the cells, one row each."""
    lines = [
        "| data | model | params | train / test windows | test users | accuracy | macro-F1 "
        f"| macro-F1 last {LAST_EPOCHS} epochs | s / epoch |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['model']} | {r['parameters']:,} "
            f"| {r['train_windows']} / {r['test_windows']} | {', '.join(r['test_users'])} "
            f"| {r['accuracy']:.3f} | {r['macro_f1']:.3f} "
            f"| {r['macro_f1_last']:.3f} ± {r['macro_f1_last_std']:.3f} "
            f"| {r['epoch_seconds']:.2f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="outputs/baselines")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=["microbi_convlstm"])
    parser.add_argument(
        "--data",
        nargs="+",
        choices=[label for label, _, _ in GRID],
        default=[label for label, _, _ in GRID],
        help="grid rows to run (default: all)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.2)  # = holdout_fraction
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    args = build_parser().parse_args(argv)
    rows = [
        run_cell(label, group, overrides, model, args)
        for model in args.models
        for label, group, overrides in GRID
        if label in args.data
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    (out / "baselines.json").write_text(json.dumps(rows, indent=2))
    (out / "baselines.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
