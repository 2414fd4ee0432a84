"""``fedhar-report RUN_DIR...``: one markdown page that compares runs side by side.

For each run directory: what sets it apart from the others (the options whose values differ,
from each run's ``config.yaml``), its final scores and costs (``summary.json``, or read back
from ``metrics.jsonl`` for a run that stopped early) and its plots. One more plot draws every
run's held-out and per-user macro-F1 against round. A multirun writes the page for its jobs
(``report.md`` in the sweep directory); ``--out`` puts it elsewhere.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from omegaconf import OmegaConf

from experiments.plots import CURVES
from experiments.report import summarize_run
from experiments.run_dirs import numbers_config
from experiments.sinks import read_metrics

PAGE, CURVES_PLOT = "report.md", "report_curves.png"
SCORES = (
    ("held-out F1", "heldout_macro_f1"),
    ("user F1", "user_mean_f1"),
    ("worst-10% F1", "user_worst10_f1"),
    ("rounds", "rounds"),
    ("failures", "total_failures"),
    ("MB up", "bytes_up"),
    ("s / round", "mean_round_wall_s"),
)
MAX_SETTING_KEYS = 6  # options named per run; more differ: the first, alphabetically


def differing_options(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Per run, the options (that change the numbers) whose values differ between the runs."""
    configs = [numbers_config(OmegaConf.load(d / "config.yaml")) for d in run_dirs]  # type: ignore[arg-type]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    return [{k: c.get(k) for k in differ} for c in configs]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "bytes_up":
        return f"{value / 1e6:.2f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def plot_curves(run_dirs: Sequence[Path], labels: Sequence[str], path: Path) -> None:
    """Held-out and per-user mean macro-F1 of every run against round."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, (group, key, title) in zip(axes, CURVES[:2], strict=True):
        for run_dir, label in zip(run_dirs, labels, strict=True):
            rows = read_metrics(run_dir)
            values = [(r.get(group) or {}).get(key) for r in rows]
            if any(v is not None for v in values):
                ax.plot([r["server_round"] for r in rows], values, marker="o", label=label)
        ax.set(xlabel="round", ylabel="macro-F1", ylim=(0, 1), title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write ``out/report.md`` (and its curves plot) comparing ``run_dirs``; return its path."""
    runs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in runs if not (d / "config.yaml").exists()]
    if missing:
        raise FileNotFoundError(f"not run directories (no config.yaml): {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    settings = differing_options(runs)
    labels = [
        ", ".join(f"{k}={v}" for k, v in list(s.items())[:MAX_SETTING_KEYS]) or d.name
        for d, s in zip(runs, settings, strict=True)
    ]
    plot_curves(runs, labels, out / CURVES_PLOT)
    lines = [f"# {len(runs)} runs compared", "", f"![macro-F1 against round]({CURVES_PLOT})", ""]
    lines += ["| run | setting | " + " | ".join(name for name, _ in SCORES) + " |"]
    lines += ["|---" * (len(SCORES) + 2) + "|"]
    for run, label in zip(runs, labels, strict=True):
        try:
            summary = summarize_run(run)
        except ValueError:  # no completed rounds yet
            summary = {}
        cells = [_cell(key, summary.get(key)) for _, key in SCORES]
        lines.append(f"| `{run.name}` | {label} | " + " | ".join(cells) + " |")
    for run in runs:
        link = Path(os.path.relpath(run, out))
        lines += ["", f"## `{run.name}`", "", f"`{run}`", ""]
        lines += [f"![{plot}]({link / plot})" for plot in ("metrics.png", "per_user_f1.png")
                  if (run / plot).exists()]  # fmt: skip
    page = out / PAGE
    page.write_text("\n".join(lines) + "\n")
    return page


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``fedhar-report``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.md goes (default: the runs' common parent)")  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out or Path(os.path.commonpath([p.resolve() for p in args.runs]))
    if out in {p.resolve() for p in args.runs}:  # one run: next to it, not inside it
        out = out.parent
    print(write_report(args.runs, out))


if __name__ == "__main__":
    main()
