"""Shared test setup: single-threaded torch, a throwaway cache, where the real dataset lives."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from flwr.app import Message

from tests.helpers.grids import InProcessGrid
from tests.helpers.replies import make_reply

torch.set_num_threads(1)

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sp-sw-har"
CATALOGUE_YAML = Path(__file__).resolve().parents[1] / "configs/fleet/devices/catalogue.yaml"


def sp_sw_har_root() -> Path:
    """sp-sw-har: FEDHAR_DATA_DIR/sp-sw-har, FEDHAR_DATA_DIR itself, or ../shared/data."""
    env = os.environ.get("FEDHAR_DATA_DIR")
    if env:
        base = Path(env)
        return base / "sp-sw-har" if (base / "sp-sw-har").is_dir() else base
    return _DEFAULT_DATA


@pytest.fixture(scope="session", autouse=True)
def temporary_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FEDHAR_CACHE_DIR points into this test run's temporary folder, never ~/.cache.

    A test that sets its own (monkeypatch.setenv or a cache_dir option) wins for its duration.
    """
    folder = tmp_path_factory.mktemp("fedhar-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDHAR_CACHE_DIR", str(folder))
        yield folder


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


@pytest.fixture
def in_process_grid() -> type[InProcessGrid]:
    return InProcessGrid


@pytest.fixture
def reply() -> Callable[..., Message]:
    """`tests.helpers.replies.make_reply`, as a fixture."""
    return make_reply
