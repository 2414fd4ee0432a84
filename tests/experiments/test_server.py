"""Resuming a run directory is refused under a config that would change its numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments.compose import ConfigError, load_config
from experiments.server import check_resumable


def _saved(run_dir: Path, overrides: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(load_config(overrides), resolve=True))


def test_more_rounds_or_other_tracking_may_resume_but_another_seed_may_not(tmp_path: Path) -> None:
    _saved(tmp_path, ["num_rounds=3"])
    check_resumable(load_config(["num_rounds=9", "tracking.wandb=true"]), tmp_path)  # no raise
    with pytest.raises(ConfigError, match="seed"):
        check_resumable(load_config(["num_rounds=9", "seed=1"]), tmp_path)


def test_a_changed_hyperparameter_is_refused_with_the_fix(tmp_path: Path) -> None:
    _saved(tmp_path, [])
    with pytest.raises(ConfigError, match=r"different config \(strategy\..*resume=false"):
        check_resumable(load_config(["strategy=fedprox"]), tmp_path)
