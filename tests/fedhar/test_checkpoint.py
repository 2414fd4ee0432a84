"""Checkpoints round-trip exactly and refuse unreadable files with a fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhar.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    check_checkpoint_matches,
    load_checkpoint,
    save_checkpoint,
)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, dtype=np.int64)}
    state = {"m_t": {"w": np.ones((2, 3), dtype=np.float32)}}
    save_checkpoint(tmp_path, Checkpoint(4, arrays, state))
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None and loaded.server_round == 4
    assert all(np.array_equal(loaded.arrays[k], v) for k, v in arrays.items())
    assert np.array_equal(loaded.strategy_state["m_t"]["w"], state["m_t"]["w"])
    assert load_checkpoint(tmp_path / "elsewhere") is None


def test_corrupt_checkpoint_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"unreadable.*delete it"):
        load_checkpoint(tmp_path)


def _saved(tmp_path: Path) -> Path:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float32)}
    return save_checkpoint(tmp_path, Checkpoint(3, arrays, {}))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_checkpoint_is_one_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"checkpoint {path} is unreadable.*resume=false"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_of_another_model_is_refused_before_the_run_starts(tmp_path: Path) -> None:
    _saved(tmp_path)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None
    check_checkpoint_matches(tmp_path, checkpoint, {"w": (2, 3), "b": (2,)})  # no raise
    with pytest.raises(ValueError, match=r"missing \['head.weight'\].*unexpected \['b'\]"):
        check_checkpoint_matches(tmp_path, checkpoint, {"w": (2, 3), "head.weight": (1,)})
    with pytest.raises(ValueError, match=r"other shapes \['w'\]"):
        check_checkpoint_matches(tmp_path, checkpoint, {"w": (3, 2), "b": (2,)})
