"""Checkpoints round-trip exactly and refuse unreadable files with a fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhar.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint


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
