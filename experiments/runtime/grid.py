"""A Flower Grid whose nodes live in a pool of Ray actors, fed in batches.

Every simulated node is a Flower node id and a `Context` that the grid keeps between rounds
(its ``state`` is what a stateful ClientApp or mod writes) and ships with each message.
``send_and_receive`` splits a round's messages into batches of at most ``messages_per_call``
and hands them out to idle workers as they finish, so a slow worker delays only its own
batch. While messages wait (queued, or unstarted in a busy batch) and every worker is busy,
a client that has run for more than ``stall_share`` of the send's timeout is abandoned: its
worker is killed and replaced, its batch's unstarted messages go back to the queue and the
client gets an error reply, so a hung client does not keep healthy ones from their turn.
Replies that are not in by the timeout are missing from the result (the strategy and
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
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import ray
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from experiments.runtime.worker import Finished

WORKER_LOST = ErrorCode.CLIENT_APP_CRASHED  # Error.code of a reply whose worker failed
WorkerFactory = Callable[[], Any]  # -> a ClientWorker actor handle


STEAL_RETRY_S = 0.1  # an idle worker asks a busy batch again this often until it has begun
WATCH_S = 0.5  # how often busy workers are checked for a stalled client while work waits
CONTROL_TIMEOUT_S = 10.0  # a worker's control calls (release, finished, running_s) answer within


@dataclass
class _Call:
    """One batch in flight on one worker."""

    worker: Any
    batch_id: int
    batch: list[Message]  # by position
    stolen: set[int] = field(default_factory=set)  # positions handed to other workers
    exhausted: bool = False  # release gave nothing back: do not ask again
    dead: bool = False  # the worker's process died during the call

    @property
    def left(self) -> int:
        return len(self.batch) - len(self.stolen)


def _work_waits(queue: list[list[Message]], in_flight: dict[Any, _Call]) -> bool:
    """Whether messages wait for a worker: queued, or not yet started in a busy batch."""
    return bool(queue) or any(c.left > 1 for c in in_flight.values())


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
    stall_share : float | None
        Share of a send's timeout after which a running client is abandoned while other
        messages wait for a worker; None: never.
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
        stall_share: float | None = 0.25,
    ) -> None:
        if num_workers < 1 or messages_per_call < 1:
            raise ValueError("need at least one worker and one message per call")
        self.new_worker = new_worker
        self.workers = [new_worker() for _ in range(num_workers)]
        self.messages_per_call = messages_per_call
        self.stall_share = stall_share
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
        self.placements: Counter[str] = Counter()  # Ray node id -> replies since round_stats
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
        """One batch per worker, cut to at most messages_per_call; idle workers steal the rest."""
        size = max(1, min(self.messages_per_call, math.ceil(len(messages) / len(self.workers))))
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
        stall_s = (
            None if timeout is None or self.stall_share is None else timeout * self.stall_share
        )
        queue = self._batches(messages)
        idle = list(self.workers)
        in_flight: dict[Any, _Call] = {}
        replies: list[Message] = []
        while queue or in_flight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if stall_s is not None and not idle and _work_waits(queue, in_flight):
                for ref, busy in list(in_flight.items()):
                    if self._stalled(busy, stall_s):
                        got, again = self._abandon(in_flight.pop(ref), stall_s)
                        replies += got
                        queue += again
                        idle.append(self._replace(busy.worker))
            if idle and not queue:
                queue += self._steal(in_flight, remaining)
            while queue and idle:
                worker, batch = idle.pop(), queue.pop(0)
                work = [(i, m, self.contexts[m.metadata.dst_node_id]) for i, m in enumerate(batch)]
                call = _Call(worker, next(self._batch_ids), batch)
                in_flight[worker.handle.remote(call.batch_id, work)] = call
            wait_s = None if math.isinf(remaining) else max(0.0, deadline - time.monotonic())
            if idle and any(not c.exhausted and c.left >= 2 for c in in_flight.values()):
                wait_s = STEAL_RETRY_S if wait_s is None else min(wait_s, STEAL_RETRY_S)
            if stall_s is not None and not idle and _work_waits(queue, in_flight):
                wait_s = WATCH_S if wait_s is None else min(wait_s, WATCH_S)  # watch for stalls
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            for ref in done:
                call = in_flight.pop(ref)
                got, requeue = self._collect(ref, call)
                replies += got
                queue += [requeue] if requeue else []
                idle.append(self._replace(call.worker) if call.dead else call.worker)
        if in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
            for ref in ready:  # finished just at the deadline: not hung
                replies += self._collect(ref, in_flight.pop(ref))[0]
            replies += self._salvage(list(in_flight.values()), timeout)
        return replies

    def _steal(self, in_flight: dict[Any, _Call], remaining: float) -> list[list[Message]]:
        """Unstarted messages of a busy batch, handed back by its worker, as one batch."""
        for call in sorted(in_flight.values(), key=lambda c: -c.left):
            if call.exhausted or call.left < 2:
                continue
            try:
                wait_s = min(10.0, remaining)
                given = ray.get(call.worker.release.remote(call.batch_id), timeout=wait_s)
            except (ray.exceptions.RayError, TimeoutError):
                call.exhausted = True  # whatever it hands back later is re-queued on return
                continue
            if given is None:  # the batch has not begun on its worker: ask again later
                continue
            if not given:
                call.exhausted = True
                continue
            call.stolen.update(given)
            return [[call.batch[i] for i in given]]
        return []

    def _stalled(self, call: _Call, stall_s: float) -> bool:
        """Whether ``call``'s message in progress has run longer than ``stall_s``."""
        try:
            running = ray.get(
                call.worker.running_s.remote(call.batch_id), timeout=CONTROL_TIMEOUT_S
            )
        except (ray.exceptions.RayError, TimeoutError):
            return False  # the call's own result will say what happened
        return running is not None and running > stall_s

    def _abandon(self, call: _Call, stall_s: float) -> tuple[list[Message], list[list[Message]]]:
        """(replies, batches to queue again) of a call whose client stalled: the replies it
        has, an error reply for the stalled message, its unstarted messages as one batch."""
        worker, unstarted = call.worker, list[int]()
        try:
            while given := ray.get(worker.release.remote(call.batch_id), timeout=CONTROL_TIMEOUT_S):
                unstarted += given
            finished = ray.get(worker.finished.remote(call.batch_id), timeout=CONTROL_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError):
            finished = ("", [], [])
        call.stolen.update(unstarted)
        ray_node, results, _ = finished
        replies = self._accept((ray_node, results, []), call.batch)
        done = {position for position, _, _ in results}
        reason = (f"no reply after {stall_s:.1f} s while other clients waited for a worker; "
                  "the client was abandoned and its worker restarted")  # fmt: skip
        replies += [
            Message(Error(code=WORKER_LOST, reason=reason), reply_to=m)
            for i, m in enumerate(call.batch)
            if i not in call.stolen and i not in done
        ]
        log(WARNING, "a client ran past %.1f s while others waited; abandoning it", stall_s)
        return replies, [[call.batch[i] for i in unstarted]] if unstarted else []

    def _collect(self, ref: Any, call: _Call) -> tuple[list[Message], list[Message]]:
        """(replies, messages to queue again) of one finished call; if the call failed, an
        error reply for every message it held."""
        try:
            finished = ray.get(ref)
        except ray.exceptions.RayError as failed:
            if isinstance(failed, ray.exceptions.RayActorError):
                call.dead = True
            reason = f"the simulation worker failed: {type(failed).__name__}"
            held = [m for i, m in enumerate(call.batch) if i not in call.stolen]
            return [Message(Error(code=WORKER_LOST, reason=reason), reply_to=m) for m in held], []
        _, _, released = finished
        late = [call.batch[i] for i in released if i not in call.stolen]  # a late `release`
        return self._accept(finished, call.batch), late

    def _accept(self, finished: Finished, batch: list[Message]) -> list[Message]:
        ray_node, results, _ = finished
        for position, _, state in results:
            if state is not None:
                self.contexts[batch[position].metadata.dst_node_id].state = state
            self.placements[ray_node] += 1
        return [reply for _, reply, _ in results]

    def _replace(self, worker: Any) -> Any:
        """Kill ``worker`` and start a fresh one in its place; returns the new one."""
        ray.kill(worker)
        fresh = self.new_worker()
        self.workers[self.workers.index(worker)] = fresh
        return fresh

    def _salvage(self, busy: list[_Call], timeout: float | None) -> list[Message]:
        """At the timeout: take what each busy worker's batch has finished, then kill the
        worker and start a fresh one in its place (its current client is hung or slow)."""
        log(WARNING, "%d worker(s) still busy after the %s s timeout; replacing them",
            len(busy), timeout)  # fmt: skip
        asked = [(call, call.worker.finished.remote(call.batch_id)) for call in busy]
        replies: list[Message] = []
        for call, ref in asked:
            try:
                replies += self._accept(ray.get(ref, timeout=10.0), call.batch)
            except (ray.exceptions.RayError, TimeoutError) as error:
                log(WARNING, "could not read a busy worker's finished replies: %s", error)
            self._replace(call.worker)
        return replies

    def round_stats(self) -> dict[str, float]:
        """Replies per Ray node since the last call, as ``runtime/ray-node/<node id>``."""
        counts = sorted(self.placements.items())
        stats = {f"runtime/ray-node/{node}": float(n) for node, n in counts}
        self.placements.clear()
        return stats

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
