"""Per-user adaptation report: who gains from personalization, and how new users adapt.

From a finished run directory (``--run-dir``), or after running one (``--out`` and Hydra
overrides), every client user is scored on their own test split by:

- ``global``: the federated model;
- ``personal``: the global model with the user's own layers (FedPer/FedRep heads, FedBN
  statistics), where the run's strategy kept any;
- ``ft_all``, ``ft_head``, ``ft_bias``: the global model fine-tuned on the user's training
  windows, within their device's SRAM plan and with QAT where the device uses it;
- ``local_only``: a model trained from scratch on the user's training windows alone, with the
  local epochs a user spends over the whole federated run (rounds x local epochs).

Users held out of training adapt with k windows per class (the earliest; every k is tested on
the same later windows, one window's gap after the largest k's shots). ``--adapt-devices sw``
(sp-sw-har) scores and adapts on the other device's windows: train on phones, test on
watches. Writes per_user.csv, new_users.csv, summary.json, summary.md, paired.png, cdf.png
and new_users.png.

    python -m experiments.studies.adaptation --out outputs/adapt-synthetic -- num_rounds=10
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.compose import client_settings, federation_spec, load_config, model_shape
from experiments.report import global_model, run_config
from experiments.run import run_experiment
from fedhar.adapt.finetune import FineTune, fine_tune
from fedhar.adapt.shots import few_shot_split, shot_cut
from fedhar.adapt.summary import summarize
from fedhar.data.dataset import WindowDataset
from fedhar.device.local_update import QuantSettings, as_recorded
from fedhar.device.planner import PlanDeclined
from fedhar.device.profiles import DeviceProfile
from fedhar.federation import Federation, FederationSpec, open_federation
from fedhar.models import ModelShape
from fedhar.seeding import derive_seed
from fedhar.train import evaluate
from fedhar.wire import saved_personal_state

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SCOPES = ("all", "head", "bias")
SHOTS = (1, 5, 10)


def personal_state(run_dir: Path, partition_id: int) -> dict[str, torch.Tensor]:
    saved = sorted((run_dir / "client_state" / f"node{partition_id}").glob("round*.bin"))
    return saved_personal_state(saved[-1].read_bytes()) if saved else {}


def f1(model: torch.nn.Module, windows: WindowDataset, num_classes: int) -> float:
    return evaluate(model, windows.x, windows.y, num_classes).macro_f1


class Scorer:
    """Scores the methods on one user; every model starts from a copy of the global one."""

    def __init__(
        self, cfg: DictConfig, shape: ModelShape, model: torch.nn.Module, tune: FineTune
    ) -> None:
        self.cfg, self.shape, self.model, self.tune = cfg, shape, model, tune
        self.quant = QuantSettings(**OmegaConf.to_container(cfg.quant))  # type: ignore[arg-type]
        self.local_epochs = int(cfg.num_rounds) * int(cfg.train.epochs)

    def copy(self, state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
        model = self.shape.build(1.0)
        model.load_state_dict({**self.model.state_dict(), **(state or {})})
        return model

    def tuned(
        self, scope: str, device: DeviceProfile | None, train: WindowDataset, test: WindowDataset,
        seed: int,
    ) -> float:  # fmt: skip
        try:
            adapted = fine_tune(self.copy(), self.shape, device, self.quant, train,
                                replace(self.tune, scope=scope), seed)  # fmt: skip
        except (PlanDeclined, ValueError):
            return float("nan")  # the device's plan leaves this scope nothing to train
        return f1(adapted.model, test, self.shape.num_classes)

    def local_only(
        self, device: DeviceProfile | None, train: WindowDataset, test: WindowDataset, seed: int
    ) -> float:
        torch.manual_seed(seed)
        fresh = self.shape.build(1.0)
        tune = FineTune("all", self.local_epochs, int(self.cfg.train.batch_size),
                        float(self.cfg.train.lr))  # fmt: skip
        try:
            adapted = fine_tune(fresh, self.shape, device, self.quant, train, tune, seed)
        except (PlanDeclined, ValueError):
            return float("nan")
        return f1(adapted.model, test, self.shape.num_classes)


def score_clients(
    scorer: Scorer, federation: Federation, adapt_on: Federation, run_dir: Path, seed: int
) -> list[dict[str, Any]]:
    settings = client_settings(scorer.cfg, federation)
    rows = []
    for pid, user in enumerate(federation.clients):
        data = adapt_on.client(pid)
        device = settings.device_of(user)
        if device is not None:
            data = as_recorded(data, device, settings.variability, settings.seed)
        if len(data.train) == 0 or len(data.test) == 0:
            continue
        user_seed = derive_seed(seed, pid)
        k = scorer.shape.num_classes
        row: dict[str, Any] = {"user": user, "device": data.device, "windows": len(data.test),
                               "global": f1(scorer.model, data.test, k)}  # fmt: skip
        personal = personal_state(run_dir, pid)
        if personal:
            row["personal"] = f1(scorer.copy(personal), data.test, k)
        for scope in SCOPES:
            row[f"ft_{scope}"] = scorer.tuned(scope, device, data.train, data.test, user_seed)
        row["local_only"] = scorer.local_only(device, data.train, data.test, user_seed)
        rows.append(row)
    return rows


def score_new_users(scorer: Scorer, held_out: WindowDataset, seed: int) -> list[dict[str, Any]]:
    """Every held-out user at k = 0 (the global model) and each k of `SHOTS`."""
    rows = []
    k_classes = scorer.shape.num_classes
    for index, user in enumerate(held_out.users):
        windows = held_out.for_user(user)
        cut = shot_cut(windows, max(SHOTS))
        test = windows.select(windows.start_time_s >= cut)
        if len(test) == 0:
            continue
        row: dict[str, Any] = {
            "user": user,
            "windows": len(test),
            "k0_global": f1(scorer.model, test, k_classes),
        }
        for k in SHOTS:
            shots, same_test = few_shot_split(windows, k, test_after_s=cut)
            assert len(same_test) == len(test)
            for scope in ("all", "head"):
                row[f"k{k}_ft_{scope}"] = scorer.tuned(
                    scope, None, shots, test, derive_seed(seed, index, k)
                )
            row[f"k{k}_local_only"] = scorer.local_only(
                None, shots, test, derive_seed(seed, index, k)
            )
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    if not rows:
        path.write_text("")
        return
    names = list(dict.fromkeys(name for row in rows for name in row))
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def methods_of(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per method, the users' macro-F1; users a method could not run for are left out of all."""
    names = [n for n in rows[0] if n not in ("user", "device", "windows")]
    complete = [r for r in rows if all(np.isfinite(r.get(n, np.nan)) for n in names)]
    return {n: np.array([r[n] for r in complete]) for n in names}


def markdown(summary: dict[str, dict[str, Any]], users: int) -> str:
    stats = ("mean", "median", "worst10", "improved", "worse_than_local")
    lines = [f"per-user macro-F1 over {users} users, 95% bootstrap intervals over users", "",
             "| method | " + " | ".join(stats) + " |", "|---" * (len(stats) + 1) + "|"]  # fmt: skip
    for method, values in summary.items():
        cells = [f"{values[s].value:.3f} [{values[s].low:.2f}, {values[s].high:.2f}]"
                 if s in values else "-" for s in stats]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(per_user: dict[str, np.ndarray], new_users: list[dict[str, Any]], out: Path) -> None:
    others = [m for m in per_user if m != "global"]
    fig, axes = plt.subplots(1, len(others), figsize=(3 * len(others), 3), sharey=True)
    for ax, method in zip(np.atleast_1d(axes), others, strict=True):
        for before, after in zip(per_user["global"], per_user[method], strict=True):
            ax.plot([0, 1], [before, after], color="C2" if after > before else "C3", alpha=0.6)
        ax.set_xticks([0, 1], ["global", method])
    np.atleast_1d(axes)[0].set_ylabel("per-user macro-F1")
    fig.tight_layout()
    fig.savefig(out / "paired.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, scores in per_user.items():
        ordered = np.sort(scores)
        ax.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post", label=method)
    ax.set(xlabel="per-user macro-F1", ylabel="share of users")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cdf.png", dpi=120)
    plt.close(fig)
    if new_users:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in ("ft_all", "ft_head", "local_only"):
            curve = (
                [np.nanmean([r["k0_global"] for r in new_users])] if method != "local_only" else []
            )
            ks = ([0] if curve else []) + list(SHOTS)
            curve += [np.nanmean([r[f"k{k}_{method}"] for r in new_users]) for k in SHOTS]
            ax.plot(ks, curve, marker="o", label=method)
        ax.set(xlabel="labelled windows per class (k)", ylabel="mean macro-F1, new users")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "new_users.png", dpi=120)
        plt.close(fig)


def report(
    run_dir: Path,
    out: Path,
    adapt_devices: str | None,
    seed: int,
    tune: FineTune = FineTune(),  # noqa: B008 (frozen)
) -> dict[str, Any]:
    cfg = run_config(run_dir)
    spec = federation_spec(cfg)
    federation = open_federation(spec)
    adapt_on = federation
    if adapt_devices is not None:
        options = dict(spec.options) | {"devices": adapt_devices}
        adapt_on = open_federation(replace(spec, options=FederationSpec.options_from(options)))
        if adapt_on.clients != federation.clients:
            raise SystemExit(f"--adapt-devices {adapt_devices}: the users differ from the run's")
    shape = model_shape(cfg, federation)
    scorer = Scorer(cfg, shape, global_model(run_dir, shape), tune)
    clients = score_clients(scorer, federation, adapt_on, run_dir, seed)
    new_users = score_new_users(scorer, adapt_on.holdout, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(clients, out / "per_user.csv")
    write_csv(new_users, out / "new_users.csv")
    per_user = methods_of(clients)
    summary = summarize(per_user, "global", "local_only", seed)
    curve = {
        key: float(np.nanmean([r[key] for r in new_users]))
        for key in (new_users[0] if new_users else {})
        if key not in ("user", "windows")
    }
    users = len(next(iter(per_user.values())))
    result = {
        "run_dir": str(run_dir), "adapt_devices": adapt_devices, "users": users,
        "summary": {m: {s: asdict(v) for s, v in stats.items()} for m, stats in summary.items()},
        "new_users": {"users": len(new_users), "mean_macro_f1": curve},
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    text = markdown(summary, users)
    text += "\n\nnew users (mean macro-F1): " + ", ".join(f"{k} {v:.3f}" for k, v in curve.items())
    (out / "summary.md").write_text(text + "\n")
    plot(per_user, new_users, out)
    print(text)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished run; omitted: run one in --out")
    parser.add_argument("--out", type=Path, default=Path("outputs/adaptation"))
    parser.add_argument("--adapt-devices", choices=("sp", "sw"), default=None,
                        help="sp-sw-har: adapt and test on this device's windows")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune-epochs", type=int, default=FineTune.epochs)
    parser.add_argument("--tune-lr", type=float, default=FineTune.lr)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the run, e.g. num_rounds=5"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = args.out / "run"
        run_experiment(load_config(args.overrides), run_dir)
    tune = FineTune(epochs=args.tune_epochs, lr=args.tune_lr)
    report(run_dir, args.out, args.adapt_devices, args.seed, tune)


if __name__ == "__main__":
    main()
