"""Plots of a run: metrics against round, and the per-user macro-F1 distribution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from fedhar.metrics import UserScore

CURVES = (
    ("server", "macro_f1", "held-out users macro-F1"),
    ("per_user_summary", "mean_f1", "per-user mean macro-F1"),
    ("per_user_summary", "worst10_f1", "per-user worst-10% macro-F1"),
)


def plot_metrics(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Macro-F1 curves and train loss against round."""
    fig, (ax_f1, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    rounds = [r["server_round"] for r in rows]
    for group, key, label in CURVES:
        values = [(r.get(group) or {}).get(key) for r in rows]
        if any(v is not None for v in values):
            ax_f1.plot(rounds, values, marker="o", label=label)
    ax_f1.set(xlabel="round", ylabel="macro-F1", ylim=(0, 1), title="Evaluation")
    ax_f1.legend(loc="upper left", fontsize=8)
    ax_f1.grid(alpha=0.3)
    losses = [(r.get("train") or {}).get("train-loss") for r in rows]
    ax_loss.plot(rounds, losses, marker="o", color="tab:red")
    ax_loss.set(xlabel="round", ylabel="loss", title="Mean local train loss")
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_user(scores: Sequence[UserScore], path: Path) -> None:
    """Sorted per-user macro-F1 bars, coloured by device."""
    ordered = sorted(scores, key=lambda s: s.macro_f1)
    devices = sorted({s.device for s in ordered})
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(devices)}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(ordered)), 3.8))
    ax.bar(
        [s.user for s in ordered],
        [s.macro_f1 for s in ordered],
        color=[colours[s.device] for s in ordered],
    )
    ax.set(ylabel="macro-F1", ylim=(0, 1.05), title="Per-user macro-F1 (latest round)")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    handles = [Patch(color=colour, label=device) for device, colour in colours.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper left")  # bars rise to the right
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
