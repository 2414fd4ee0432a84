"""Strategy tests act as the server's task: messages they create carry its identity."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.identity import task_identity


@pytest.fixture(autouse=True)
def server_task() -> Iterator[None]:
    with task_identity(node_id=0):
        yield
