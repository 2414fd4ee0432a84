"""Centralized baseline: outputs, scores, user-disjoint split and CLI validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import experiments.studies.centralized as centralized
from experiments.studies.centralized import build_parser, run_centralized
from fedhar.data import DATASET_NAMES
from fedhar.data.dataset import WindowDataset
from fedhar.models import MODEL_NAMES

SYNTHETIC_CLASSES = 7
TINY_SYNTHETIC = [
    "--dataset", "synthetic",
    "--option", "num_users=6",  # 4 train users + 2 unseen test users
    "--option", "seconds_per_user=120",
    "--option", "imbalance_alpha=null",  # every class present for every user
    "--option", "mean_segment_s=6",  # short bouts: every class in two minutes
    "--split", "users",
    "--test-fraction", "0.34",
    "--epochs", "8",
]  # fmt: skip


SUBJECTS = ["s01", "s02", "s03", "s04", "s06", "s07", "s08", "s09"]  # 6 train + 2 test users


@pytest.fixture
def spy_split(monkeypatch: pytest.MonkeyPatch) -> list[tuple[WindowDataset, WindowDataset]]:
    """Record the (train, test) pair that run_centralized trains and scores on."""
    seen: list[tuple[WindowDataset, WindowDataset]] = []
    real_split = centralized.split

    def recording_split(*args, **kwargs):  # type: ignore[no-untyped-def]
        pair = real_split(*args, **kwargs)
        seen.append(pair)
        return pair

    monkeypatch.setattr(centralized, "split", recording_split)
    return seen


def _run(argv: list[str], out: Path) -> dict:
    return run_centralized(build_parser().parse_args([*argv, "--out", str(out)]))


def test_synthetic_run_writes_outputs_and_beats_chance(tmp_path: Path, spy_split) -> None:
    results = _run(TINY_SYNTHETIC, tmp_path / "run")
    for name in ("results.json", "confusion.png", "learning_curve.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    assert results["macro_f1"] > 2.5 / SYNTHETIC_CLASSES
    assert [c["epoch"] for c in results["curve"]] == list(range(1, 9))
    assert results["curve"][-1]["train_loss"] < results["curve"][0]["train_loss"]

    confusion = np.asarray(results["confusion"])
    assert confusion.shape == (SYNTHETIC_CLASSES, SYNTHETIC_CLASSES)
    assert confusion.sum() == results["test_windows"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(results["accuracy"])

    ((train, test),) = spy_split
    assert not set(train.user.tolist()) & set(test.user.tolist())
    assert results["test_users"] == sorted(set(test.user.tolist())) and len(test.users) == 2
    assert (len(train), len(test)) == (results["train_windows"], results["test_windows"])


def test_same_seed_same_results(tmp_path: Path) -> None:
    argv = [*TINY_SYNTHETIC[:-1], "1"]
    first = _run(argv, tmp_path / "a")
    second = _run(argv, tmp_path / "b")
    assert (first["macro_f1"], first["confusion"]) == (second["macro_f1"], second["confusion"])
    assert first["curve"][0]["train_loss"] == second["curve"][0]["train_loss"]


@pytest.mark.parametrize(
    ("flag", "valid"), [("--dataset", DATASET_NAMES), ("--model", MODEL_NAMES)]
)
def test_cli_refuses_unknown_names_and_lists_valid_ones(
    flag: str, valid: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([flag, "no_such_name"])
    error = capsys.readouterr().err
    assert "no_such_name" in error
    assert all(name in error for name in valid)


def test_cli_refuses_option_without_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--option", "devices"])
    assert "key=value" in capsys.readouterr().err


@pytest.mark.data
def test_smartphone_subset_of_real_data(sp_sw_har_dir: Path, tmp_path: Path, spy_split) -> None:
    results = _run(
        [
            "--dataset", "sp_sw_har",
            "--option", f"root={sp_sw_har_dir}",
            "--option", f"cache_dir={tmp_path / 'cache'}",
            "--option", "devices=sp",
            "--option", f"subjects={json.dumps(SUBJECTS)}",
            "--split", "users",
            "--test-fraction", "0.25",
            "--epochs", "3",
        ],
        tmp_path / "run",
    )  # fmt: skip
    ((train, test),) = spy_split
    assert set(train.device.tolist()) == set(test.device.tolist()) == {"smartphone"}
    assert len(results["test_users"]) == 2 and not set(results["test_users"]) & set(train.users)
    assert sorted([*train.users, *test.users]) == SUBJECTS
    assert results["class_names"] == [
        "seated", "standing_up", "walking", "turning", "sitting_down"
    ]  # fmt: skip
    assert np.asarray(results["confusion"]).sum() == results["test_windows"] == len(test)
    assert results["macro_f1"] > 1.75 / 5
    assert (tmp_path / "run" / "confusion.png").is_file()
