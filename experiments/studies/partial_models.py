"""Partial-model strategies on a memory-bound fleet: does mixing widths beat a small common model?

Runs, on the same data, fleet and seed:

- ``fedavg-small``: FedAvg on the widest model every device in the fleet can train;
- ``heterofl``, ``fedrolex``: each device trains the widest width it can hold;
- ``fjord``: each device trains a width drawn every round from those it can hold;
- ``fedper``: a shared body with a personal head, each device on its widest fitting width.

and reports the held-out macro-F1 of the full global model, of each width (leading slices of the
final global model), and the per-user mean macro-F1 (each user's own later test windows). A
personal-layer strategy's global head never trains, so only its per-user mean is reported. It
also lists the clients whose widest width is each level, with the batch their memory plan
trains it at: under HeteroFL and FedRolex only they train that width on its own.

Example::

    python -m experiments.studies.partial_models --out outputs/partial_models \\
        --model dscnn --fleet mcu_heavy --rounds 15 --seed 0
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from experiments.compose import client_settings, federation_spec, load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics
from fedhar.checkpoint import load_checkpoint
from fedhar.device.local_update import QuantSettings, widest_plan
from fedhar.federation import load_federation
from fedhar.models import ModelShape, build_model
from fedhar.partial.evaluate import evaluate_widths, per_window_batchnorm, width_key
from fedhar.partial.widths import WIDTH_LEVELS
from fedhar.train import evaluate

STRATEGIES = ("heterofl", "fedrolex", "fjord", "fedper")


@dataclass(frozen=True)
class ClientPlan:
    """A client's widest trainable level and the batch its memory plan trains that level at
    (0.0 and 0: it cannot train)."""

    width: float
    batch_size: int


def widest_plans(overrides: list[str]) -> list[ClientPlan]:
    """Each client's `ClientPlan` in the configured fleet."""
    cfg = load_config(overrides)
    federation = load_federation(federation_spec(cfg))
    settings = client_settings(cfg, federation)
    shape = ModelShape(
        cfg.model.name, federation.in_channels, federation.num_classes, federation.window_length
    )
    quant = QuantSettings(**dict(cfg.quant))
    plans = []
    for _, profile in settings.devices:
        plan = widest_plan(profile, shape, quant)
        batch = 0 if plan is None else min(plan.batch_size, int(cfg.train.batch_size))
        plans.append(ClientPlan(0.0 if plan is None else plan.width, batch))
    return plans


def smallest_common_width(plans: list[ClientPlan], fleet: str, model: str) -> float:
    """The widest level every client that can train at all can train."""
    usable = [plan.width for plan in plans if plan.width > 0]
    if not usable:
        raise ValueError(f"no device of fleet {fleet} can train {model}; pick a smaller model")
    return min(usable)


def width_census(plans: list[ClientPlan]) -> dict[float, list[int]]:
    """Per level, the plan batches of the clients whose widest level it is: the clients that
    train that width alone under HeteroFL and FedRolex (FjORD draws any level up to it). A
    batch of one window makes BatchNorm normalize each window by itself in training, which the
    width's statistics at test cannot reproduce."""
    return {
        level: sorted(plan.batch_size for plan in plans if plan.width == level)
        for level in WIDTH_LEVELS
    }


def census_line(census: dict[float, list[int]]) -> str:
    """``0.25: 0 clients, 0.5: 3 clients (batch 1, 1, 1), ...``."""
    parts = []
    for level, batches in census.items():
        sizes = f" (batch {', '.join(map(str, batches))})" if batches else ""
        clients = "client" if len(batches) == 1 else "clients"
        parts.append(f"{level:g}: {len(batches)} {clients}{sizes}")
    return ", ".join(parts)


def width_scores(overrides: list[str], run_dir: Path) -> dict[str, float]:
    """Held-out scores of each width of the run's final global model, as its last round
    logged them (with each width's own BatchNorm statistics under static BatchNorm); none for
    a strategy whose config scores no widths (personal layers)."""
    cfg = load_config(overrides)
    if has_personal_head(cfg):
        return {}
    if float(cfg.model.width) < 1.0:  # the global model is itself the small model
        return {
            width_key(float(cfg.model.width), "macro_f1"): run_summary(run_dir)["heldout_macro_f1"]
        }
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir} has no metrics; the run did not finish a round")
    server = rows[-1].get("server") or {}
    return {k: float(v) for k, v in server.items() if k.startswith("width_")}


def per_window_scores(overrides: list[str], run_dir: Path) -> dict[str, float]:
    """Held-out macro-F1 of each width of the run's final global model (its checkpoint) with
    every BatchNorm normalizing each window by itself, as training on batches of one window
    does (`per_window_batchnorm`); none for a personal-layer strategy."""
    cfg = load_config(overrides)
    if has_personal_head(cfg):
        return {}
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint; the run did not finish a round")
    federation = load_federation(federation_spec(cfg))
    x, y, classes = federation.holdout.x, federation.holdout.y, federation.num_classes
    state = {name: torch.from_numpy(array) for name, array in checkpoint.arrays.items()}
    width = float(cfg.model.width)
    if width < 1.0:  # the global model is itself the small model
        model = build_model(cfg.model.name, federation.in_channels, classes, width)
        model.load_state_dict(state)
        return {
            width_key(width, "macro_f1"): evaluate(
                per_window_batchnorm(model), x, y, classes
            ).macro_f1
        }
    scores = evaluate_widths(cfg.model.name, state, WIDTH_LEVELS, x, y, classes, per_window=True)
    return {key: value for key, value in scores.items() if key.endswith("/macro_f1")}


def has_personal_head(cfg: DictConfig) -> bool:
    """Whether the strategy config says its global model is not a measure (personal layers)."""
    return "evaluate_widths" in cfg.strategy and cfg.strategy.evaluate_widths is None


def run_summary(run_dir: Path) -> dict[str, Any]:
    """The run's ``summary.json``."""
    return json.loads((run_dir / "summary.json").read_text())


def variants(base: list[str], small: float) -> dict[str, list[str]]:
    """Overrides per compared method."""
    out = {"fedavg-small": [*base, "strategy=fedavg", f"model.width={small}"]}
    for name in STRATEGIES:
        out[name] = [*base, f"strategy={name}", "model.width=1.0"]
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the compared methods."""
    head = ["method", "held-out F1 (full)", *[f"F1 @{w:g}" for w in WIDTH_LEVELS], "user mean F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name, _fmt(row["heldout_macro_f1"])]
        cells += [_fmt(row["widths"].get(width_key(w, "macro_f1"))) for w in WIDTH_LEVELS]
        cells.append(_fmt(row["user_mean_f1"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_window_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table of every width's held-out F1 with per-window BatchNorm."""
    head = ["method", *[f"F1 @{w:g}, per-window BatchNorm" for w in WIDTH_LEVELS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        if row["per_window_widths"]:
            scores = row["per_window_widths"]
            cells = [_fmt(scores.get(width_key(w, "macro_f1"))) for w in WIDTH_LEVELS]
            lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/partial_models"))
    parser.add_argument("--model", default="dscnn")  # MCU-heavy SRAM splits it over 3 widths
    parser.add_argument("--fleet", default="mcu_heavy")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="run only these methods")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. train.epochs=1")
    args = parser.parse_args(argv)
    base = [
        f"dataset={args.dataset}",
        f"model={args.model}",
        f"fleet={args.fleet}",
        f"num_rounds={args.rounds}",
        f"seed={args.seed}",
        "tracking.plots=false",
        "resume=false",
        *args.overrides,
    ]
    plans = widest_plans([*base, "model.width=1.0"])
    small = smallest_common_width(plans, args.fleet, args.model)
    rows: dict[str, dict[str, Any]] = {}
    for name, overrides in variants(base, small).items():
        if args.only and name not in args.only:
            continue
        run_dir = args.out / name
        cfg = load_config(overrides)
        summary = run_experiment(cfg, run_dir)
        personal = has_personal_head(cfg)
        rows[name] = {
            "overrides": overrides,
            "heldout_macro_f1": None if personal else summary["heldout_macro_f1"],
            "user_mean_f1": summary["user_mean_f1"],
            "bytes_down": summary["bytes_down"],
            "bytes_up": summary["bytes_up"],
            "widths": width_scores(overrides, run_dir),
            "per_window_widths": per_window_scores(overrides, run_dir),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    text = (
        f"smallest common width: {small:g}\n"
        "clients by widest width (HeteroFL and FedRolex train only that width), with the "
        f"batch each trains it at: {census_line(width_census(plans))}\n\n"
        f"{table(rows)}\n\n"
        "Each width with BatchNorm normalizing each window by itself, as plans of one window "
        f"per batch train it:\n\n{per_window_table(rows)}\n"
    )
    (args.out / "table.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
