"""Privacy study: leakage attacks against a grid of defenses, next to the utility each costs.

Run: ``python -m experiments.studies.privacy [--dataset synthetic|sp_sw_har] [--out
outputs/privacy] [-- hydra overrides]``. Per defense, one federated run (same seed, data and
fleet) gives the utility (held-out and per-user macro-F1) and epsilon; then an
honest-but-curious server attacks what that defense lets it see, at the final global model:

- **inversion**: one client's single-window FedSGD update, inverted (`attacks.inversion`);
  mean per-channel correlation with the true window, and whether the final model
  classifies the reconstruction as the true activity;
- **label (one window)**: the iDLG label of that update;
- **label counts**: LLG counts of a 32-window FedSGD batch update (share of labels right);
- **membership**: loss-threshold and LiRA (4 shadow models) AUC and TPR at 0.1% FPR of the
  released model, the clients' train windows against their own later test windows;
- **re-identification**: nearest-centroid user accuracy from the model's embeddings.

What the server sees per defense: the update (``none``); the update through the codec (int8,
4-bit); the clipped update (client-side clipping DP: noise goes on the aggregate, so the
server still sees each clipped update); the sum of the round's cohort (secure aggregation,
with or without DP); the clipped, noised update (local DP). Membership and re-identification
attack the model each defense released. Writes ``privacy.md``, ``privacy.json`` and
``privacy_utility.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.compose import federation_spec, load_config
from experiments.run import run_experiment
from experiments.sinks import read_metrics
from fedhar.checkpoint import load_checkpoint
from fedhar.federation import Federation, load_federation
from fedhar.models import build_model
from fedhar.privacy.accounting import local_noise_multiplier
from fedhar.privacy.attacks.inversion import InversionConfig, channel_correlation, invert
from fedhar.privacy.attacks.labels import count_accuracy, label_counts, label_of_window
from fedhar.privacy.attacks.membership import (
    lira_scores,
    loss_scores,
    roc_auc,
    tpr_at_fpr,
    train_shadows,
)
from fedhar.privacy.attacks.reidentify import reidentification_accuracy
from fedhar.privacy.defenses import clipped, noised, quantized, summed
from fedhar.privacy.observe import Update, client_update
from fedhar.train import TrainConfig, predict

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BASE = [
    "fleet=none",
    "tracking.progress=false",
    "tracking.plots=false",
    "resume=false",
    "quant.enabled=false",
]
CLIP = 1.0  # clipping norm of every DP defense
SECAGG_DP = ["wrappers=[secagg]", "wrappers.secagg.server.max_weight=1"]


@dataclass(frozen=True)
class Defense:
    """A defense: the run's overrides and what the server sees of one update under it."""

    name: str
    overrides: tuple[str, ...]
    view: str  # "update", "int8", "int4", "clipped", "sum", "sum-clipped", "local"
    local_epsilon: float = 0.0


DEFENSES = (
    Defense("none", (), "update"),
    Defense("int8 updates", ("wrappers=[compression]",), "int8"),
    Defense(
        "4-bit updates", ("wrappers=[compression]", "wrappers.compression.server.bits=4"), "int4"
    ),
    *(
        Defense(
            f"DP z={z}",
            ("privacy=client", f"privacy.noise_multiplier={z}", f"privacy.clipping_norm={CLIP}"),
            "clipped",
        )
        for z in (0.3, 1.0, 3.0)
    ),
    Defense("secure aggregation", ("wrappers=[secagg]",), "sum"),
    Defense(
        "secagg + DP z=1.0",
        (
            *SECAGG_DP,
            "privacy=client",
            "privacy.noise_multiplier=1.0",
            f"privacy.clipping_norm={CLIP}",
        ),
        "sum-clipped",
    ),
    Defense(
        "local DP eps=50/round",
        ("privacy=local", "privacy.local_epsilon=50", f"privacy.clipping_norm={CLIP}"),
        "local",
        50.0,
    ),
)


@dataclass(frozen=True)
class Outcome:
    """One defense's utility, privacy budget and attack results."""

    defense: str
    heldout_f1: float
    user_f1: float
    epsilon: float | None
    inversion_corr: float
    inversion_classified: bool
    window_label: bool
    label_count_accuracy: float
    mia_loss_auc: float
    mia_lira_auc: float
    mia_lira_tpr_01: float
    reid_accuracy: float
    reid_chance: float


def _model(cfg: DictConfig, federation: Federation, run_dir: Path) -> torch.nn.Module:
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(f"{run_dir} has no checkpoint")
    model = build_model(cfg.model.name, federation.in_channels, federation.num_classes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.arrays.items()})
    return model


def _seen(defense: Defense, updates: list[Update], seed: int) -> Update:
    """What the server sees of ``updates[0]`` (its cohort: the rest) under ``defense``."""
    target = updates[0]
    if defense.view == "int8":
        return quantized(target, 8, seed)
    if defense.view == "int4":
        return quantized(target, 4, seed)
    if defense.view == "clipped":
        return clipped(target, CLIP)
    if defense.view == "sum":
        return summed(updates)
    if defense.view == "sum-clipped":
        return summed([clipped(u, CLIP) for u in updates])
    if defense.view == "local":
        sigma = CLIP * local_noise_multiplier(defense.local_epsilon, 1e-5)  # sensitivity = C
        return noised(target, CLIP, sigma, seed)
    return target


def attack(defense: Defense, cfg: DictConfig, run_dir: Path, seed: int) -> dict[str, Any]:
    """Every attack on what ``defense`` shows the server, at the run's final model."""
    federation = load_federation(federation_spec(cfg))
    model = _model(cfg, federation, run_dir)
    clients = [federation.client(i) for i in range(len(federation.clients))]
    shape = clients[0].train.x.shape[1:]
    lr = float(cfg.train.lr)
    # one window per cohort member, the first client's is the target
    windows = [(torch.tensor(c.train.x[:1]), torch.tensor(c.train.y[:1])) for c in clients]
    single = [client_update(model, x, y, 1, lr) for x, y in windows]
    view = _seen(defense, single, seed)
    label = label_of_window(view)
    search = InversionConfig(iterations=200, restarts=2)
    found = invert(model, view, shape, label, search, seed)
    true_x, true_y = windows[0][0][0].numpy(), int(windows[0][1])
    classified = int(predict(model, found.window[None]).argmax(axis=1)[0]) == true_y
    # label counts of a 32-window batch of the first client, with the other clients'
    # windows as the attacker's auxiliary data
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(clients[0].train.y), min(32, len(clients[0].train.y)), replace=False)
    bx, by = torch.tensor(clients[0].train.x[pick]), torch.tensor(clients[0].train.y[pick])
    batches = [client_update(model, bx, by, 1, lr)]
    for c in clients[1:]:
        other = rng.choice(len(c.train.y), min(32, len(c.train.y)), replace=False)
        batches.append(
            client_update(
                model, torch.tensor(c.train.x[other]), torch.tensor(c.train.y[other]), 1, lr
            )
        )
    auxiliary = torch.tensor(np.concatenate([c.train.x[:16] for c in clients[1:]]))
    counts = label_counts(model, _seen(defense, batches, seed), len(by), lr, auxiliary)
    true_counts = np.bincount(by.numpy(), minlength=federation.num_classes)
    return {
        "inversion_corr": channel_correlation(true_x, found.window),
        "inversion_classified": classified,
        "window_label": label == true_y,
        "label_count_accuracy": count_accuracy(counts, true_counts),
        **membership(cfg, federation, clients, model, seed),
        **reidentification(model, clients),
    }


def membership(
    cfg: DictConfig, federation: Federation, clients: list[Any], model: torch.nn.Module, seed: int
) -> dict[str, float]:
    """Loss-threshold and LiRA on the released model: the clients' train windows (members)
    against their own later test windows (never trained on)."""
    rng = np.random.default_rng(seed)
    members = np.concatenate([c.train.x for c in clients])
    member_y = np.concatenate([c.train.y for c in clients])
    others = np.concatenate([c.test.x for c in clients])
    other_y = np.concatenate([c.test.y for c in clients])
    size = min(300, len(member_y), len(other_y))
    m = rng.choice(len(member_y), size, replace=False)
    o = rng.choice(len(other_y), size, replace=False)
    x = np.concatenate([members[m], others[o]])
    y = np.concatenate([member_y[m], other_y[o]])
    is_member = np.arange(2 * size) < size
    rounds, epochs = int(cfg.num_rounds), int(cfg.train.epochs)
    shadow_config = TrainConfig(
        epochs=rounds * epochs, batch_size=int(cfg.train.batch_size), lr=float(cfg.train.lr)
    )
    shadows = train_shadows(
        lambda: build_model(cfg.model.name, federation.in_channels, federation.num_classes),
        x,
        y,
        4,
        shadow_config,
        seed,
    )
    lira = lira_scores(model, shadows, x, y)
    return {
        "mia_loss_auc": roc_auc(loss_scores(model, x, y), is_member),
        "mia_lira_auc": roc_auc(lira, is_member),
        "mia_lira_tpr_01": tpr_at_fpr(lira, is_member, 0.001),
    }


def reidentification(model: torch.nn.Module, clients: list[Any]) -> dict[str, float]:
    """Enrolled with each client's train windows, probed with its later test windows."""
    enrol = {c.user: c.train.x for c in clients}
    probe = {c.user: c.test.x for c in clients}
    return {
        "reid_accuracy": reidentification_accuracy(model, enrol, probe),
        "reid_chance": 1 / len(clients),
    }


def run_defense(
    defense: Defense, dataset: str, out: Path, overrides: list[str], seed: int
) -> Outcome:
    cfg = load_config([*BASE, f"dataset={dataset}", f"seed={seed}", *defense.overrides, *overrides])
    run_dir = out / defense.name.replace(" ", "_").replace("=", "").replace("/", "-")
    summary = run_experiment(cfg, run_dir)
    rows = read_metrics(run_dir)
    epsilon = rows[-1]["extra"].get("privacy/epsilon") if rows else None
    results = attack(defense, OmegaConf.load(run_dir / "config.yaml"), run_dir, seed)  # type: ignore[arg-type]
    return Outcome(
        defense.name,
        float(summary["heldout_macro_f1"]),
        float(summary["user_mean_f1"]),
        epsilon,
        **results,
    )


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| defense | held-out F1 | user F1 | epsilon | inversion corr | reconstruction "
        "classified right | window label | label counts | MIA loss AUC | LiRA AUC "
        "| LiRA TPR@0.1% | re-id (chance) |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        eps = "-" if o.epsilon is None else f"{o.epsilon:.2f}"
        lines.append(
            f"| {o.defense} | {o.heldout_f1:.3f} | {o.user_f1:.3f} | {eps} | "
            f"{o.inversion_corr:.2f} | {'yes' if o.inversion_classified else 'no'} | "
            f"{'right' if o.window_label else 'wrong'} | {o.label_count_accuracy:.2f} | "
            f"{o.mia_loss_auc:.3f} | {o.mia_lira_auc:.3f} | {o.mia_lira_tpr_01:.3f} | "
            f"{o.reid_accuracy:.2f} ({o.reid_chance:.2f}) |"
        )
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path) -> None:
    """Attack success against utility, one panel per attack; epsilon labels the DP points."""
    attacks = [
        ("label_count_accuracy", "label counts recovered"),
        ("mia_lira_auc", "LiRA AUC"),
        ("reid_accuracy", "re-identification"),
    ]
    figure, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.6))
    for axis, (key, title) in zip(axes, attacks, strict=True):
        for o in outcomes:
            axis.scatter(o.heldout_f1, getattr(o, key))
            tag = o.defense if o.epsilon is None else f"{o.defense}\neps={o.epsilon:.1f}"
            axis.annotate(tag, (o.heldout_f1, getattr(o, key)), fontsize=6)
        axis.set_xlabel("held-out macro-F1")
        axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic", help="synthetic or sp_sw_har")
    parser.add_argument("--out", type=Path, default=Path("outputs/privacy"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="a subset of the defenses")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. num_rounds=5")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    chosen = [d for d in DEFENSES if args.only is None or d.name in args.only]
    if args.only and len(chosen) != len(args.only):
        parser.error(f"unknown defenses; choose from {[d.name for d in DEFENSES]}")
    outcomes = [run_defense(d, args.dataset, args.out, args.overrides, args.seed) for d in chosen]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "privacy.json").write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    text = table(outcomes)
    (args.out / "privacy.md").write_text(text + "\n")
    plot(outcomes, args.out / "privacy_utility.png")
    print(text)


if __name__ == "__main__":
    main()
