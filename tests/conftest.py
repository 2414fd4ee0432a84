"""Shared test setup: single-threaded torch, and where the real dataset lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sp-sw-har"


def sp_sw_har_root() -> Path:
    """sp-sw-har: FEDHAR_DATA_DIR/sp-sw-har, FEDHAR_DATA_DIR itself, or ../shared/data."""
    env = os.environ.get("FEDHAR_DATA_DIR")
    if env:
        base = Path(env)
        return base / "sp-sw-har" if (base / "sp-sw-har").is_dir() else base
    return _DEFAULT_DATA


@pytest.fixture(scope="session")
def sp_sw_har_dir() -> Path:
    """Path to sp-sw-har; missing data fails under CI and skips elsewhere."""
    root = sp_sw_har_root()
    if not (root / "DATA").is_dir():
        message = f"sp-sw-har not found at {root}; set FEDHAR_DATA_DIR to the folder holding it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root
