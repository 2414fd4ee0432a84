"""A Flower Grid whose nodes live in a pool of Ray actors, fed in batches.

Every simulated node is a Flower node id and a `Context` that the grid keeps between rounds
(its ``state`` is what a stateful ClientApp or mod writes) and ships with each message.
``send_and_receive`` splits a round's messages into batches of at most ``messages_per_call``
and hands them out to idle workers as they finish, so a slow worker delays only its own
batch. Replies that are not in by the timeout are missing from the result (the strategy and
Tracking count those nodes as failed); a worker that still holds work then is killed and
replaced, so a hung client never blocks the next round. Which Ray node ran each reply is
counted, and reported once per round (`round_stats`) into the round's record.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from logging import WARNING
from typing import Any

import ray
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

WORKER_LOST = 2  # Error.code of a reply whose worker died before answering
WorkerFactory = Callable[[], Any]  # -> a ClientWorker actor handle


class RayGrid(Grid):
    """Delivers messages to ``num_nodes`` simulated nodes hosted by ``workers``.

    Parameters
    ----------
    new_worker : WorkerFactory
        Starts one `ClientWorker` actor; called ``num_workers`` times, and again to replace
        a worker that was killed at a timeout.
    num_workers : int
        Size of the pool.
    num_nodes : int
        Simulated nodes; node ``i`` has partition id ``i``.
    run_config : dict
        Flower run config every node's context carries.
    messages_per_call : int
        Most messages one actor call carries.
    first_node_id : int
        Node id of partition 0; the others follow.
    """

    def __init__(
        self,
        new_worker: WorkerFactory,
        num_workers: int,
        num_nodes: int,
        run_config: dict[str, Any] | None = None,
        messages_per_call: int = 8,
        first_node_id: int = 1,
        run_id: int = 1,
    ) -> None:
        if num_workers < 1 or messages_per_call < 1:
            raise ValueError("need at least one worker and one message per call")
        self.new_worker = new_worker
        self.workers = [new_worker() for _ in range(num_workers)]
        self.messages_per_call = messages_per_call
        self._run = Run.create_empty(run_id)
        config = dict(run_config or {})
        self.contexts = {
            first_node_id + i: Context(
                run_id=run_id,
                node_id=first_node_id + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=config,
            )
            for i in range(num_nodes)
        }
        self.placements: Counter[tuple[str, int]] = Counter()  # (Ray node, pid) -> replies
        self._pulled: dict[str, Message] = {}
        self._batch_ids = itertools.count()
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1

    @property
    def run(self) -> Run:
        return self._run

    def set_run(self, run: Run) -> None:
        self._run = run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Run ``messages`` to completion and keep their replies to be pulled by id."""
        messages = list(messages)
        ids = [uuid.uuid4().hex for _ in messages]
        by_node = dict(zip((m.metadata.dst_node_id for m in messages), ids, strict=True))
        for reply in self.send_and_receive(messages):
            self._pulled[by_node[reply.metadata.src_node_id]] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._pulled.pop(i) for i in message_ids if i in self._pulled]

    def _batches(self, messages: Sequence[Message]) -> list[list[Message]]:
        """Batches small enough that every worker gets several, at most messages_per_call."""
        size = max(1, min(self.messages_per_call,
                          math.ceil(len(messages) / (4 * len(self.workers)))))  # fmt: skip
        return [list(messages[i : i + size]) for i in range(0, len(messages), size)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Every reply that arrives within ``timeout`` seconds (None: wait for all)."""
        messages = list(messages)
        unknown = sorted({m.metadata.dst_node_id for m in messages} - set(self.contexts))
        if unknown:
            raise ValueError(f"messages for unknown node ids {unknown[:5]}")
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        queue = self._batches(messages)
        idle = list(self.workers)
        in_flight: dict[Any, tuple[Any, int, list[Message]]] = {}
        replies: list[Message] = []
        while queue or in_flight:
            if idle and not queue and in_flight:
                queue += self._steal(in_flight)
            while queue and idle:
                worker, batch = idle.pop(), queue.pop(0)
                work = [(m, self.contexts[m.metadata.dst_node_id]) for m in batch]
                batch_id = next(self._batch_ids)
                in_flight[worker.handle.remote(batch_id, work)] = (worker, batch_id, batch)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait_s = None if math.isinf(remaining) else remaining
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            for ref in done:
                worker, _, batch = in_flight.pop(ref)
                replies += self._collect(ref, batch)
                idle.append(worker)
        if in_flight:
            replies += self._salvage(list(in_flight.values()), timeout)
        return replies

    def _steal(self, in_flight: dict[Any, tuple[Any, int, list[Message]]]) -> list[list[Message]]:
        """Unstarted messages of the busiest batch, handed back by its worker, as one batch."""
        ref = max(in_flight, key=lambda r: len(in_flight[r][2]))
        worker, batch_id, batch = in_flight[ref]
        if len(batch) < 2:
            return []
        try:
            released = set(ray.get(worker.release.remote(batch_id), timeout=10.0))
        except (ray.exceptions.RayError, TimeoutError):
            return []
        stolen = [m for m in batch if m.metadata.dst_node_id in released]
        kept = [m for m in batch if m.metadata.dst_node_id not in released]
        in_flight[ref] = (worker, batch_id, kept)
        return [stolen] if stolen else []

    def _collect(self, ref: Any, batch: list[Message]) -> list[Message]:
        """The replies of one finished call; if its worker died, an error reply for each."""
        try:
            finished = ray.get(ref)
        except ray.exceptions.RayActorError as lost:
            reason = f"the simulation worker died: {type(lost).__name__}"
            return [Message(Error(code=WORKER_LOST, reason=reason), reply_to=m) for m in batch]
        return self._accept(finished)

    def _accept(self, finished: tuple[str, int, list[tuple[Message, RecordDict]]]) -> list[Message]:
        ray_node, pid, results = finished
        for reply, state in results:
            self.contexts[reply.metadata.src_node_id].state = state
            self.placements[(ray_node, pid)] += 1
        return [reply for reply, _ in results]

    def _salvage(
        self, busy: list[tuple[Any, int, list[Message]]], timeout: float | None
    ) -> list[Message]:
        """At the timeout: take what each busy worker's batch has finished, then kill the
        worker and start a fresh one in its place (its current client is hung or slow)."""
        log(WARNING, "%d worker(s) still busy after the %s s timeout; replacing them",
            len(busy), timeout)  # fmt: skip
        replies: list[Message] = []
        for worker, batch_id, _ in busy:
            try:
                replies += self._accept(ray.get(worker.finished.remote(batch_id), timeout=10.0))
            except (ray.exceptions.RayError, TimeoutError) as error:
                log(WARNING, "could not read a busy worker's finished replies: %s", error)
            ray.kill(worker)
            self.workers[self.workers.index(worker)] = self.new_worker()
        return replies

    def round_stats(self) -> dict[str, float]:
        """Replies per Ray node since the last call, as ``runtime/ray-node/<node id>``."""
        counts: Counter[str] = Counter()
        for (ray_node, _), n in self.placements.items():
            counts[f"runtime/ray-node/{ray_node}"] += n
        self.placements.clear()
        return {key: float(n) for key, n in sorted(counts.items())}

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)

