"""Heterogeneous-fleet study: an all-phone fleet against an MCU-heavy one, each with and
without sensor variability, on the same federation, model and seed.

Run: ``python -m experiments.studies.fleet_study [--dataset sp_sw_har] [--rounds 15] [--out DIR]``.
Each arm is one federated run in ``DIR/<arm>/``; the study writes ``fleet_study.md`` (the
tables, also printed), ``fleet_study.json`` (per-arm figures) and ``fleet_study.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.compose import client_settings, federation_spec, load_config
from experiments.run import run_experiment
from experiments.sinks import PER_USER_FILE, read_metrics
from experiments.studies.fleet_plots import plot_fleet_study
from fedhar.device.costs import simulate_client_cost, training_ops
from fedhar.device.local_update import QuantSettings, plan_on_device
from fedhar.device.planner import PlanDeclined, trainable_names
from fedhar.device.profiles import DeviceProfile, training_budget_bytes
from fedhar.device.sensors import SensorVariability
from fedhar.federation import load_federation
from fedhar.models import ModelShape, build_model

SWITCHES = tuple(f.name for f in dataclasses.fields(SensorVariability) if f.type in (bool, "bool"))
DECLINE_PREFIX = "no-plan:"  # how clients/app.py prefixes a decline for lack of SRAM


@dataclass(frozen=True)
class Arm:
    """One fleet of the study, with its sensor variability on or off."""

    fleet: str  # a configs/fleet/ group option
    variability: bool

    @property
    def name(self) -> str:
        return f"{self.fleet}-{'var' if self.variability else 'clean'}"

    def overrides(self) -> list[str]:
        """Hydra overrides: the fleet, and every variability switch off for a clean arm."""
        off = [] if self.variability else [f"fleet.sensor_variability.{s}=false" for s in SWITCHES]
        return [f"fleet={self.fleet}", *off]


ARMS = tuple(Arm(f, v) for f in ("all_phone", "mcu_heavy") for v in (True, False))


def summarize_arm(arm: Arm, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Final scores and per-round simulated cost figures of one arm's run."""
    rows = read_metrics(run_dir)
    extra = [r["extra"] for r in rows]
    wall = [e.get("fleet/sim_wall_clock_s", 0.0) for e in extra]
    energy = [e.get("fleet/sim_energy_j", 0.0) for e in extra]
    reasons = Counter(d for r in rows for d in r["declines"])
    return {
        "arm": arm.name,
        "fleet": arm.fleet,
        "variability": arm.variability,
        "rounds": len(rows),
        "heldout_macro_f1": summary["heldout_macro_f1"],
        "user_mean_f1": summary["user_mean_f1"],
        "user_worst10_f1": summary["user_worst10_f1"],
        "sim_round_s": mean(wall),
        "sim_total_s": sum(wall),
        "sim_round_j": mean(energy),
        "sim_total_j": sum(energy),
        "dropouts_per_round": mean(e.get("fleet/dropouts", 0.0) for e in extra),
        "stragglers_per_round": mean(e.get("fleet/rejected/straggler", 0.0) for e in extra),
        "declines_per_round": mean(r["num_declines"] for r in rows),
        "no_plan_declines": sum(n for d, n in reasons.items() if d.startswith(DECLINE_PREFIX)),
        "decline_reasons": dict(reasons),
        "curve": {
            "round": [r["server_round"] for r in rows],
            "heldout_macro_f1": [(r.get("server") or {}).get("macro_f1") for r in rows],
            "sim_wall_clock_s": wall,
            "sim_energy_j": energy,
        },
        "device_f1": _device_f1(run_dir, len(rows)),
    }


def _device_f1(run_dir: Path, last_round: int) -> dict[str, float]:
    """Mean own-test macro-F1 per device profile in the last round."""
    scores: dict[str, list[float]] = {}
    with (run_dir / PER_USER_FILE).open() as handle:
        for row in csv.DictReader(handle):
            if int(row["server_round"]) == last_round:
                scores.setdefault(row["device"], []).append(float(row["macro_f1"]))
    return {device: mean(values) for device, values in sorted(scores.items())}


def device_plans(cfg: DictConfig) -> list[dict[str, Any]]:
    """Per device of the fleet: users, the SRAM plan for the model, compute seconds per round."""
    federation = load_federation(federation_spec(cfg))
    settings = client_settings(cfg, federation)
    shape = ModelShape(
        cfg.model.name, federation.in_channels, federation.num_classes, federation.window_length
    )
    model = build_model(shape.name, shape.in_channels, shape.num_classes, cfg.model.width)
    windows = {u: len(federation.client(i).train) for i, u in enumerate(federation.clients)}
    users: dict[str, list[str]] = {}
    profiles: dict[str, DeviceProfile] = {}
    for user, profile in settings.devices:
        users.setdefault(profile.name, []).append(user)
        profiles[profile.name] = profile
    quant = QuantSettings(**OmegaConf.to_container(cfg.quant, resolve=True))  # type: ignore[arg-type]
    rows = []
    for name, profile in sorted(profiles.items()):
        slowest = max(windows[u] for u in users[name])
        compute_s: float | None = None  # a declining device never trains
        try:
            plan = plan_on_device(profile, shape, float(cfg.model.width), quant)
            what = f"{plan.mode}{plan.last_k or ''} b{plan.batch_size}"
            ops = training_ops(model, shape.in_channels, shape.window_length,
                               trainable_names(model, plan))  # fmt: skip
            compute_s = simulate_client_cost(
                profile, ops, slowest, cfg.train.epochs, 0, 0
            ).compute_s
        except PlanDeclined as declined:
            what = f"declines ({math.ceil(declined.smallest_bytes / 1024)} KiB needed)"
        rows.append(
            {
                "device": name,
                "users": len(users[name]),
                "budget_kib": training_budget_bytes(profile) // 1024,
                "plan": what,
                "compute_s": compute_s,
            }
        )
    return rows


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_tables(results: list[dict[str, Any]], plans: dict[str, list[dict[str, Any]]]) -> str:
    """The study's markdown: one row per arm, then the fleets' devices and their plans."""
    lines = [
        "| arm | held-out F1 | user mean F1 | user worst-10% F1 | sim s/round | sim s total "
        "| J/round | J total | drop-outs/round | stragglers/round | declines/round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['arm']} | {_f(r['heldout_macro_f1'])} | {_f(r['user_mean_f1'])} "
            f"| {_f(r['user_worst10_f1'])} | {_g(r['sim_round_s'])} | {_g(r['sim_total_s'])} "
            f"| {_g(r['sim_round_j'])} | {_g(r['sim_total_j'])} | {_f(r['dropouts_per_round'], 2)} "
            f"| {_f(r['stragglers_per_round'], 2)} | {_f(r['declines_per_round'], 2)} |"
        )
    by_arm = {(r["fleet"], r["variability"]): r["device_f1"] for r in results}
    lines += [
        "",
        "| fleet | device | users | SRAM budget KiB | plan | sim compute s/round (slowest user) "
        "| final user F1 (var / clean) |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for fleet, rows in plans.items():
        for p in rows:
            f1 = [by_arm.get((fleet, v), {}).get(p["device"]) for v in (True, False)]
            lines.append(
                f"| {fleet} | {p['device']} | {p['users']} | {p['budget_kib']:,} | {p['plan']} "
                f"| {_g(p['compute_s'])} | {_f(f1[0])} / {_f(f1[1])} |"
            )
    reasons = sorted({d for r in results for d in r["decline_reasons"]})
    lines += ["", *(f"- decline: {d}" for d in reasons)]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every selected arm, then write and print the tables and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic", help="a configs/dataset/ option")
    parser.add_argument("--model", default="microbi_convlstm", help="a configs/model/ option")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/fleet_study"))
    parser.add_argument(
        "--arms", nargs="+", default=[a.name for a in ARMS], choices=[a.name for a in ARMS]
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="extra Hydra override for every arm (repeatable), e.g. --set fleet.deadline_s=60",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue arms from checkpoints")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = [
        f"dataset={args.dataset}",
        f"model={args.model}",
        f"num_rounds={args.rounds}",
        f"train.epochs={args.epochs}",
        f"seed={args.seed}",
        f"resume={str(args.resume).lower()}",
        "tracking.progress=false",
        *args.overrides,
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    plans: dict[str, list[dict[str, Any]]] = {}
    for arm in (a for a in ARMS if a.name in args.arms):
        cfg = load_config([*base, *arm.overrides()])
        run_dir = args.out / arm.name
        results.append(summarize_arm(arm, run_dir, run_experiment(cfg, run_dir)))
        plans.setdefault(arm.fleet, device_plans(cfg))
    title = (
        f"Fleet study: {args.dataset}, {args.model}, {args.rounds} rounds x {args.epochs} "
        f"epochs, seed {args.seed}"
    )
    table = f"# {title}\n\n{format_tables(results, plans)}"
    (args.out / "fleet_study.md").write_text(table)
    (args.out / "fleet_study.json").write_text(
        json.dumps({"results": results, "plans": plans}, indent=2)
    )
    plot_fleet_study(results, args.out / "fleet_study.png", title)
    print(table)
    return results


if __name__ == "__main__":
    main()
