"""Config validation: every shipped config passes, every bad value names its key and range."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.compose import CONFIG_DIR, ConfigError, load_config
from experiments.run import GROUPS, help_text
from experiments.validate import validate_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "group", ["strategy", "dataset", "fleet", "model", "privacy", "experiment"]
)
def test_every_shipped_config_passes(group: str) -> None:
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        validate_config(load_config([f"{group}={path.stem}"]))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("strategy.algorithm.fraction_train=1.5", "a number in (0, 1]"),
        ("strategy.algorithm.fraction_train=0", "a number in (0, 1]"),
        ("train.batch_size=0", "a whole number >= 1"),
        ("train.epochs=1.5", "a whole number >= 1"),
        ("num_rounds=-1", "a whole number >= 1"),
        ("num_rounds=abc", "a whole number >= 1"),
        ("num_rounds=true", "a whole number >= 1"),
        ("train.lr=0", "a number > 0"),
        ("train.lr=nan", "a number > 0"),
        ("federation.holdout_fraction=1.5", "a number in [0, 1)"),
        ("federation.test_fraction=0", "a number in (0, 1)"),
        ("runtime.round_timeout_s=0", "a number > 0"),
        ("runtime.max_failed_rounds=0", "a whole number >= 1"),
        ("model.width=1.25", "a number in (0, 1]"),
        ("dataset.options.num_users=1", "a whole number >= 2"),
    ],
)
def test_a_bad_value_names_its_key_and_range(override: str, expected: str) -> None:
    key, _, _ = override.partition("=")
    with pytest.raises(ConfigError) as error:
        validate_config(load_config([override]))
    assert str(error.value).startswith(f"{key}=")
    assert str(error.value).endswith(f"it must be {expected}")


def _fedhar(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from experiments.run import cli; cli()", *args,
               f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "FEDHAR_DEBUG"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_command_line_shows_a_user_error_in_one_line_without_traceback(tmp_path) -> None:
    result = _fedhar("train.batch_size=0", tmp_path=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    expected = "train.batch_size=0 is invalid: it must be a whole number >= 1"
    assert lines[0] == f"fedhar: error: {expected}"
    assert len(lines) == 2 and "--debug" in lines[1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything started
    debug = _fedhar("--debug", "train.batch_size=0", tmp_path=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_help_is_short_shows_every_group_and_the_main_keys_with_their_comments() -> None:
    text = help_text()
    assert len(text.splitlines()) < 100
    for group in GROUPS:
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        assert f"  {group:<11} {', '.join(options)}" in text
    assert "round_timeout_s: 600   # one deadline per round: training and evaluation" in text
    assert "nrf52840" not in text and "hydra:" not in text  # the catalogue and Hydra stay out
