"""The fleet study's figure: accuracy against simulated time, and energy per round, per arm."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"all_phone": "tab:blue", "mcu_heavy": "tab:orange"}  # one colour per fleet


def plot_fleet_study(results: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Held-out macro-F1 against cumulative simulated seconds (log scale), and mean energy
    per round as bars with the range over rounds; solid = sensor variability on, dashed or
    hatched = off.
    """
    fig, (ax_f1, ax_j) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        curve = r["curve"]
        colour = COLOURS.get(r["fleet"], "tab:gray")
        style = "-" if r["variability"] else "--"
        elapsed = list(accumulate(curve["sim_wall_clock_s"]))
        ax_f1.plot(
            elapsed, curve["heldout_macro_f1"], style, marker="o", ms=3, color=colour,
            label=r["arm"],
        )  # fmt: skip
    ax_f1.set(
        xscale="log",
        xlabel="cumulative simulated wall clock (s)",
        ylabel="held-out macro-F1",
        ylim=(0, 1),
        title="Accuracy against simulated time",
    )
    ax_f1.grid(alpha=0.3, which="both")
    ax_f1.legend(fontsize=8, loc="upper left")

    for i, r in enumerate(results):
        energy = r["curve"]["sim_energy_j"]
        mid = r["sim_round_j"]
        ax_j.bar(
            i, mid, color=COLOURS.get(r["fleet"], "tab:gray"),
            hatch="" if r["variability"] else "//", edgecolor="black",
            yerr=[[mid - min(energy)], [max(energy) - mid]], capsize=4,
        )  # fmt: skip
        ax_j.annotate(f"{mid:.3g} J", (i, mid), ha="center", va="bottom", fontsize=8,
                      xytext=(0, 6), textcoords="offset points")  # fmt: skip
    ax_j.set_xticks(range(len(results)), [r["arm"] for r in results], fontsize=8)
    ax_j.set(yscale="log", ylabel="simulated energy per round (J)", title="Fleet energy per round")
    ax_j.grid(alpha=0.3, axis="y", which="both")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
