"""The base of every strategy wrapper, and the round report that wrappers share.

A wrapper (tracking, checkpointing, fleet simulation, compression, encryption) subclasses
`StrategyWrapper` and overrides only the methods whose behaviour it changes. Wrappers stack:
each one's ``strategy`` is the next inner wrapper or the algorithm itself; `wrapper_chain`
walks the stack.

Every piece that may keep a reply from aggregation reports it the same way, through
`RoundReport`: ``reject(node, code, detail)`` records the reply as that client's failure and
counts it as ``<prefix>/rejected`` and ``<prefix>/rejected/<code>``; ``accept()`` counts
``<prefix>/accepted``; ``count(name)`` adds any other figure under ``<prefix>/``. Tracking
collects ``round_stats()`` and ``round_rejections()`` from every `RoundReport` of the stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from logging import WARNING
from typing import ClassVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log


class RoundReport:
    """This round's accepted and rejected replies and other figures, under ``prefix/``.

    Subclasses set ``prefix`` and call ``start_round()`` when a round's training starts.
    """

    prefix: ClassVar[str] = ""  # metric namespace, e.g. "compression"
    counts_replies: ClassVar[bool] = True  # report <prefix>/accepted and /rejected every round

    _stats: dict[str, float]
    _rejections: list[tuple[int, str]]

    def start_round(self) -> None:
        """Forget the previous round's figures."""
        self._stats = (
            {f"{self.prefix}/accepted": 0.0, f"{self.prefix}/rejected": 0.0}
            if self.counts_replies
            else {}
        )
        self._rejections = []

    def count(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to ``<prefix>/<name>``."""
        if not hasattr(self, "_stats"):
            self.start_round()
        key = f"{self.prefix}/{name}"
        self._stats[key] = self._stats.get(key, 0.0) + value

    def accept(self) -> None:
        """Count one reply passed on to aggregation."""
        self.count("accepted")

    def reject(self, node_id: int, code: str, detail: str) -> None:
        """Keep ``node_id``'s reply from aggregation: a failure of that client this round."""
        self.count("rejected")
        self.count(f"rejected/{code}")
        self._rejections.append((node_id, f"{self.prefix} rejected {code}: {detail}"))
        log(WARNING, "%s rejected the reply of node %d (%s): %s", self.prefix, node_id, code,
            detail)  # fmt: skip

    def round_stats(self) -> dict[str, float]:
        """This round's figures, sorted by name."""
        if not hasattr(self, "_stats"):
            return {}
        return dict(sorted(self._stats.items()))

    def round_rejections(self) -> list[tuple[int, str]]:
        """(node id, reason) of every reply rejected this round."""
        return list(getattr(self, "_rejections", []))


class StrategyWrapper(RoundReport, Strategy):
    """Delegates all five `Strategy` methods to ``strategy``.

    ``stack_rank`` orders wrappers in a stack, inner to outer: a wrapper must sit outside
    every wrapper of a lower rank. Wrappers that act on plain updates (Flower's DP wrappers,
    clipping) have rank 0; a codec that decodes updates into plain arrays ranks above them,
    and transport that opens sealed updates ranks above the codec.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy (an algorithm or another wrapper).
    """

    stack_rank: ClassVar[int] = 0

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def wrapper_chain(strategy: Strategy) -> Iterator[Strategy]:
    """``strategy``, then each strategy it wraps, down to the algorithm.

    Follows ``.strategy`` of fedhar's wrappers and of Flower's (the DP wrappers hold their
    inner strategy there too).
    """
    current: Strategy | None = strategy
    while current is not None:
        yield current
        inner = getattr(current, "strategy", None)
        current = inner if isinstance(inner, Strategy) else None


def innermost(strategy: Strategy) -> Strategy:
    """The algorithm at the bottom of a wrapper stack."""
    *_, core = wrapper_chain(strategy)
    return core
