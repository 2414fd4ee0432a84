"""``make docs``: the README's quickstart output and plots, regenerated from a fresh run.

Runs the quickstart (``configs/experiment/quickstart.yaml``, what ``make run`` runs) in a
temporary directory, keeps its ``metrics.jsonl`` as ``docs/quickstart-metrics.jsonl``, copies
its plots to ``docs/`` and writes its per-round table between the README's markers. The table
is rendered from the kept metrics, so a test can check that the README shows exactly them.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from experiments.compose import load_config
from experiments.report import summary_table
from experiments.run import run_experiment
from experiments.run_dirs import config_hash
from experiments.sinks import METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]
README, DOCS = ROOT / "README.md", ROOT / "docs"
KEPT_METRICS = "quickstart-metrics.jsonl"  # in docs/
PLOTS = ("metrics.png", "per_user_f1.png")
QUICKSTART = ("experiment=quickstart", "tracking.progress=false")
BEGIN, END = "<!-- quickstart output: make docs -->", "<!-- end of quickstart output -->"
WIDTH = 80  # columns of the rendered table, as a terminal shows it


def run_quickstart(run_dir: Path, overrides: tuple[str, ...] = ()) -> Path:
    """The quickstart run, in ``run_dir``."""
    run_experiment(load_config([*QUICKSTART, *overrides]), run_dir)
    return run_dir


def shown_dir() -> str:
    """Where ``make run`` writes: the quickstart preset's ``hydra.run.dir``."""
    return f"outputs/quickstart-seed0-{config_hash(load_config(list(QUICKSTART)))}"


def rendered_table(metrics_dir: Path) -> str:
    """The table `fedhar` prints for the run whose ``metrics.jsonl`` is in ``metrics_dir``."""
    console = Console(record=True, width=WIDTH, file=io.StringIO())
    console.print(summary_table(metrics_dir, shown_dir()))
    return console.export_text()


def shown_table(readme: str) -> str:
    """The table between the README's markers (without its code fence)."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} and {END!r}")
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    return block.strip().removeprefix("```").removesuffix("```").strip("\n") + "\n"


def with_table(readme: str, table: str) -> str:
    """``readme`` with ``table`` between its markers."""
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n```\n{table.rstrip()}\n```\n{END}{tail}"


def kept_table() -> str:
    """The rendered table of the kept quickstart metrics (``docs/quickstart-metrics.jsonl``)."""
    with tempfile.TemporaryDirectory(prefix="fedhar-docs-") as folder:
        shutil.copy(DOCS / KEPT_METRICS, Path(folder) / METRICS_FILE)
        return rendered_table(Path(folder))


def main() -> None:
    """Run the quickstart; refresh ``docs/`` and the README's table from it."""
    with tempfile.TemporaryDirectory(prefix="fedhar-quickstart-") as tmp:
        run = run_quickstart(Path(tmp) / "run")
        shutil.copy(run / METRICS_FILE, DOCS / KEPT_METRICS)
        for plot in PLOTS:
            shutil.copy(run / plot, DOCS / plot)
    table = kept_table()
    README.write_text(with_table(README.read_text(), table))
    print(table, end="")
    print(f"README.md, docs/{KEPT_METRICS} and docs/{', docs/'.join(PLOTS)} updated")


if __name__ == "__main__":
    main()
