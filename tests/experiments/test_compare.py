"""fedhar-report: runs side by side, set apart by the options that differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.compare import CURVES_PLOT, main, write_report
from experiments.compose import load_config
from experiments.sinks import METRICS_FILE


def _run(folder: Path, overrides: list[str], f1s: list[float]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(load_config(overrides), resolve=True))
    rows = [
        {"server_round": i + 1, "server": {"macro_f1": f1}, "per_user_summary": {"mean_f1": f1},
         "train": {"train-loss": 1.0}, "wall_time_s": 2.0, "num_failures": 0,
         "num_declines": 0, "bytes_up": 1_500_000, "bytes_down": 10}
        for i, f1 in enumerate(f1s)
    ]  # fmt: skip
    (folder / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.png").write_bytes(b"png")
    return folder


def test_the_page_names_what_differs_and_shows_every_run(tmp_path: Path) -> None:
    a = _run(tmp_path / "runs" / "a", ["train.lr=0.01", "num_rounds=2"], [0.2, 0.4])
    b = _run(tmp_path / "runs" / "b", ["train.lr=0.05", "num_rounds=9"], [0.3, 0.6])
    page = write_report([a, b], tmp_path / "out")
    text = page.read_text()
    assert "| `a` | train.lr=0.01 | 0.400 | 0.400 | - | 2 | 0 | 3.00 | 2.000 |" in text
    assert "| `b` | train.lr=0.05 | 0.600 |" in text
    assert "num_rounds" not in text  # more rounds do not set a run apart
    assert (tmp_path / "out" / CURVES_PLOT).stat().st_size > 0
    for link in ("../runs/a/metrics.png", "../runs/b/metrics.png"):
        assert f"({link})" in text and (page.parent / link).exists()


def test_the_command_puts_the_page_beside_the_runs_and_refuses_other_folders(
    tmp_path: Path, capsys
) -> None:
    a = _run(tmp_path / "sweep" / "job0", ["seed=0"], [0.1])
    b = _run(tmp_path / "sweep" / "job1", ["seed=1"], [0.2])
    main([str(a), str(b)])
    assert (tmp_path / "sweep" / "report.md").exists()
    assert "seed=1" in (tmp_path / "sweep" / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match=r"no config\.yaml"):
        write_report([tmp_path / "sweep"], tmp_path / "out")
