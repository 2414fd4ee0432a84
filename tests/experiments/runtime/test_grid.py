"""RayGrid with stand-in workers: a dying worker, a slow one, node state between calls."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import ray
from flwr.app import Message, MessageType, RecordDict

from experiments.runtime.grid import WORKER_LOST, RayGrid
from experiments.runtime.worker import CONCURRENCY_GROUPS
from tests.helpers.workers import EchoWorker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # as experiments.runtime sets it
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=40)
        yield
        ray.shutdown()


def _grid(tmp_path, nodes: int, messages_per_call: int = 16) -> RayGrid:  # type: ignore[no-untyped-def]
    actor = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(EchoWorker)  # type: ignore[call-overload]
    marker = str(tmp_path / "died")
    return RayGrid(lambda: actor.remote(marker), 2, nodes, messages_per_call=messages_per_call)


def _messages(grid: RayGrid, nodes: list[int]) -> list[Message]:
    return [Message(RecordDict(), n, MessageType.TRAIN) for n in nodes]


def test_a_dying_worker_fails_only_its_batch_and_is_replaced(local_ray, tmp_path) -> None:
    grid = _grid(tmp_path, 6)
    replies = grid.send_and_receive(_messages(grid, [1, 3, 4, 5, 6]), timeout=60)
    lost = [r for r in replies if r.has_error()]
    assert lost and all(r.error.code == WORKER_LOST for r in lost)
    assert {r.metadata.src_node_id for r in replies} == {1, 3, 4, 5, 6}
    again = grid.send_and_receive(_messages(grid, [1, 3, 4, 5, 6]), timeout=60)
    assert not any(r.has_error() for r in again), [r.error.reason for r in again if r.has_error()]
    grid.shutdown()


def test_a_slow_client_costs_only_itself_and_state_survives(local_ray, tmp_path) -> None:
    (tmp_path / "died").touch()  # nobody dies here
    grid = _grid(tmp_path, 8)
    started = time.monotonic()
    replies = grid.send_and_receive(_messages(grid, [2, 3, 4, 5, 6, 7, 8]), timeout=5)
    assert time.monotonic() - started < 25
    assert sorted(r.metadata.src_node_id for r in replies) == [3, 4, 5, 6, 7, 8], [
        (r.metadata.src_node_id, r.has_error() and r.error.reason) for r in replies
    ]
    grid.send_and_receive(_messages(grid, [3]), timeout=30)
    assert grid.contexts[3].state["calls"]["n"] == 2 and grid.contexts[2].state == RecordDict()
    grid.shutdown()


def test_hung_clients_on_every_worker_are_abandoned_so_waiting_ones_run(local_ray, tmp_path):
    (tmp_path / "died").touch()
    grid = _grid(tmp_path, 10, messages_per_call=1)  # nodes 2 and 9 hang, one per worker
    replies = {r.metadata.src_node_id: r for r in
               grid.send_and_receive(_messages(grid, [2, 9, 3, 4, 5]), timeout=20)}  # fmt: skip
    assert sorted(replies) == [2, 3, 4, 5, 9]
    for node in (3, 4, 5):
        assert not replies[node].has_error(), replies[node].error.reason
    for node in (2, 9):
        assert replies[node].has_error() and "abandoned" in replies[node].error.reason
    grid.shutdown()
