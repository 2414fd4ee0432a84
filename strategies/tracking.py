"""A strategy wrapper that measures every round and hands the record to sinks."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.metrics import UserScore, summarize_users
from fedhar.records import ClientFailure, RoundRecord, RoundSink
from fedhar.wire import (
    CLIENT_KEY,
    METRICS_KEY,
    content_nbytes,
    decline_reason,
    eval_report_from_record,
    identity_from_record,
)
from strategies.deadline import RoundClock
from strategies.run_info import FleetDirectory
from strategies.wrapper import RoundReport, StrategyWrapper, wrapper_chain

ServerEvaluate = Callable[[int, ArrayRecord], dict[str, float]]
MAX_REASON_CHARS = 300  # keep a failing client's traceback summary readable in metrics
NO_REPLY = "no reply within the round timeout; raise runtime.round_timeout_s for slow clients"
MAX_FAILURE_LINES = 10  # per round on the console; metrics.jsonl has them all
fedhar_log = logging.getLogger("fedhar")


class NoProgress(RuntimeError):
    """Rounds in a row brought too few usable updates: the run cannot make progress."""


def no_progress_message(stalled: Sequence[RoundRecord], min_updates: int) -> str:
    """Which rounds stalled and their clients' most frequent reasons (reasons that differ only
    in numbers, such as node ids, count as one, shown by their first instance)."""
    reasons = [f.reason for r in stalled for f in r.failures]
    reasons += [f"declined: {d}" for r in stalled for d in r.declines]
    groups = Counter(re.sub(r"\d+", "#", reason) for reason in reasons)
    example = {re.sub(r"\d+", "#", reason): reason for reason in reversed(reasons)}
    top = "; ".join(f"{n}x {example[key]}" for key, n in groups.most_common(3)) or "no replies"
    updates = ", ".join(str(r.succeeded) for r in stalled)
    return (
        f"rounds {stalled[0].server_round}-{stalled[-1].server_round} had fewer than "
        f"{min_updates} usable update(s) each ({updates}); the run cannot make progress. "
        f"Most frequent reasons: {top}. Fix the cause, or raise runtime.max_failed_rounds"
    )


def report_failures(record: RoundRecord, most: int = MAX_FAILURE_LINES) -> None:
    """One warning line per failed client of the round (at most ``most``, then a count)."""
    failures = [*record.failures, *record.evaluate_failures]
    for failure in failures[:most]:
        who = f"node {failure.node_id}"
        if failure.partition_id is not None:
            who += f" (partition {failure.partition_id}, user {failure.user})"
        fedhar_log.warning("round %d: %s failed: %s", record.server_round, who, failure.reason)
    if len(failures) > most:
        fedhar_log.warning("round %d: %d more failures in metrics.jsonl",
                           record.server_round, len(failures) - most)  # fmt: skip


def summarize_error(reason: str) -> str:
    """The gist of a client's error: the last line of its traceback, without Ray's wrapping."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    gist = lines[-1] if lines else "unknown error"
    return gist.split("Message: ", 1)[-1][:MAX_REASON_CHARS]


def collect_round_stats(strategy: Strategy) -> dict[str, float]:
    """Merge ``round_stats()`` of every `RoundReport` down the wrapper stack."""
    stats: dict[str, float] = {}
    for layer in wrapper_chain(strategy):
        if isinstance(layer, RoundReport):
            stats.update(layer.round_stats())
    return stats


def collect_rejections(strategy: Strategy) -> tuple[ClientFailure, ...]:
    """Replies that any `RoundReport` down the wrapper stack rejected this round, with reasons."""
    return tuple(
        ClientFailure(node, reason)
        for layer in wrapper_chain(strategy)
        if isinstance(layer, RoundReport)
        for node, reason in layer.round_rejections()
    )


def failures_of(expected: Sequence[int], replies: Sequence[Message]) -> tuple[ClientFailure, ...]:
    """Error replies, with their error's gist, and expected nodes that sent no reply."""
    errors = [
        ClientFailure(m.metadata.src_node_id, summarize_error(m.error.reason or ""))
        for m in replies
        if m.has_error()
    ]
    replied = {m.metadata.src_node_id for m in replies}
    silent = [ClientFailure(node, NO_REPLY) for node in sorted(set(expected) - replied)]
    return tuple(errors + silent)


def _as_floats(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def _user_of(message: Message) -> str:
    return identity_from_record(message.content.config_records[CLIENT_KEY]).user


def _user_score(message: Message) -> UserScore:
    identity = identity_from_record(message.content.config_records[CLIENT_KEY])
    report = eval_report_from_record(message.content.metric_records[METRICS_KEY])
    return UserScore(
        user=identity.user,
        device=identity.device,
        num_windows=report.num_examples,
        accuracy=report.eval_accuracy,
        macro_f1=report.eval_macro_f1,
    )


@dataclass
class _RoundInProgress:
    """What the wrapper has seen of the current round so far."""

    started: float = field(default_factory=time.perf_counter)
    sampled: int = 0
    expected: tuple[int, ...] = ()  # node ids asked to train
    expected_evaluate: tuple[int, ...] = ()  # node ids asked to evaluate
    succeeded: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    failures: tuple[ClientFailure, ...] = ()
    declines: tuple[str, ...] = ()
    train: dict[str, float] = field(default_factory=dict)
    arrays: ArrayRecord | None = None


class Tracking(StrategyWrapper):
    """Wraps ``strategy``: counts bytes, failures and declines, collects per-user scores,
    runs server-side evaluation, and emits one :class:`RoundRecord` per round to ``sinks``.

    Replies that decline to train (no update) are counted and kept from the inner strategy,
    so built-in strategies only ever aggregate real updates. A round's failures are the
    clients whose reply carried an error, that did not reply before the grid's timeout, or
    whose update a wrapper rejected. A runtime that reports where clients ran sets
    ``runtime_stats``; its figures join the round's ``extra``.

    With ``max_failed_rounds``, that many rounds in a row with fewer than ``min_updates``
    usable updates raise `NoProgress` once their records have reached the sinks. With the
    run's enrollment ``directory``, every failure names its partition id and user. A round
    ``clock`` (`strategies.deadline`) starts when each round's training is configured.
    """

    def __init__(
        self,
        strategy: Strategy,
        server_evaluate: ServerEvaluate | None = None,
        sinks: Sequence[RoundSink] = (),
        max_failed_rounds: int | None = None,
        min_updates: int = 1,
        directory: FleetDirectory | None = None,
        clock: RoundClock | None = None,
    ) -> None:
        super().__init__(strategy)
        self.directory, self.clock = directory, clock
        if max_failed_rounds is not None and max_failed_rounds < 1:
            raise ValueError(f"max_failed_rounds must be >= 1, got {max_failed_rounds}")
        self.server_evaluate = server_evaluate
        self.sinks = list(sinks)
        self.max_failed_rounds, self.min_updates = max_failed_rounds, max(1, int(min_updates))
        self._stalled: list[RoundRecord] = []
        self.runtime_stats: Callable[[], dict[str, float]] | None = None  # set by the runtime
        self._round = _RoundInProgress()

    def summary(self) -> None:
        log(INFO, "\t├──> Tracking %d sink(s) around:", len(self.sinks))
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        started = time.perf_counter()
        if self.clock is not None:
            self.clock.start()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._round = _RoundInProgress(
            started=started,
            sampled=len(messages),
            expected=tuple(m.metadata.dst_node_id for m in messages),
            bytes_down=sum(content_nbytes(m.content) for m in messages),
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failures = failures_of(self._round.expected, replies)
        answered = [m for m in replies if not m.has_error()]
        declines = tuple(r for m in answered if (r := decline_reason(m.content)) is not None)
        # Sorted by user: floating-point sums then do not depend on the order replies arrived in.
        updates = sorted((m for m in answered if decline_reason(m.content) is None), key=_user_of)
        errors = [m for m in replies if m.has_error()]
        self._round.failures, self._round.declines = failures, declines
        self._round.succeeded = len(updates)
        self._round.bytes_up = sum(content_nbytes(m.content) for m in updates)
        arrays, metrics = self.strategy.aggregate_train(server_round, updates + errors)
        self._round.train = _as_floats(metrics)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self._round.arrays = arrays
        self._round.expected_evaluate = tuple(m.metadata.dst_node_id for m in messages)
        self._round.bytes_down += sum(content_nbytes(m.content) for m in messages)
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = sorted(replies, key=lambda m: "" if m.has_error() else _user_of(m))
        evaluate_failures = failures_of(self._round.expected_evaluate, replies)
        answered = [m for m in replies if not m.has_error()]
        scores = tuple(sorted((_user_score(m) for m in answered), key=lambda s: s.user))
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        progress = self._round
        server = (
            self.server_evaluate(server_round, progress.arrays)
            if self.server_evaluate is not None and progress.arrays is not None
            else {}
        )
        rejections = collect_rejections(self.strategy)
        runtime = self.runtime_stats() if self.runtime_stats is not None else {}
        record = RoundRecord(
            server_round=server_round,
            wall_time_s=time.perf_counter() - progress.started,
            sampled=progress.sampled,
            succeeded=progress.succeeded - len(rejections),
            failures=self._named(progress.failures + rejections),
            declines=progress.declines,
            bytes_down=progress.bytes_down,
            bytes_up=progress.bytes_up,
            train=progress.train,
            server=server,
            federated=_as_floats(metrics),
            per_user=scores,
            per_user_summary=summarize_users(list(scores)) if scores else None,
            extra=collect_round_stats(self.strategy) | runtime,
            evaluate_failures=self._named(evaluate_failures),
        )
        for sink in self.sinks:
            sink.on_round(record)
        report_failures(record)
        self._check_progress(record)
        return metrics

    def _named(self, failures: tuple[ClientFailure, ...]) -> tuple[ClientFailure, ...]:
        """``failures`` with the partition id and user enrollment gave each node."""
        if self.directory is None:
            return failures
        return tuple(
            replace(f, partition_id=info.partition_id, user=info.user)
            if (info := self.directory.nodes.get(f.node_id)) is not None
            else f
            for f in failures
        )

    def _check_progress(self, record: RoundRecord) -> None:
        if self.max_failed_rounds is None:
            return
        if record.succeeded >= self.min_updates:
            self._stalled = []
            return
        self._stalled.append(record)
        if len(self._stalled) >= self.max_failed_rounds:
            raise NoProgress(no_progress_message(self._stalled, self.min_updates))
