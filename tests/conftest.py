"""Shared test setup: single-threaded torch, a throwaway cache, where the real dataset lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

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


class InProcessGrid:
    """Routes messages straight to a ClientApp in this process: whole rounds without Ray.

    A handler that raises becomes an error reply, as in Flower's simulation runtime.
    """

    def __init__(
        self,
        app: Any,
        num_nodes: int,
        first_node_id: int = 101,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
            1,
            0,
            1,
        )  # as the runtime sets
        self.app = app
        self.contexts = {
            first_node_id + i: Context(
                run_id=1,
                node_id=first_node_id + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Any, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            try:
                replies.append(self.app(message, self.contexts[message.metadata.dst_node_id]))
            except Exception as error:  # the runtime turns a raising handler into an error reply
                replies.append(Message(Error(code=0, reason=repr(error)), reply_to=message))
        return replies


@pytest.fixture
def in_process_grid() -> type[InProcessGrid]:
    return InProcessGrid
