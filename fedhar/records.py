"""What one federated round produced, and the protocol of everything that consumes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fedhar.metrics import PerUserSummary, UserScore


@dataclass(frozen=True)
class ClientFailure:
    """A client whose round gave no usable result: its reply carried an error, it did not
    reply within the round timeout, or the server rejected its update."""

    node_id: int
    reason: str
    partition_id: int | None = None  # from enrollment; None for a node that never enrolled
    user: str | None = None


@dataclass(frozen=True)
class RoundRecord:
    """Everything measured in one round; one line of ``metrics.jsonl``."""

    server_round: int
    wall_time_s: float
    sampled: int
    succeeded: int
    failures: tuple[ClientFailure, ...]  # of the train stage
    declines: tuple[str, ...]  # reasons of clients that could not train this round
    bytes_down: int  # array payload sent to clients (train and evaluate messages)
    bytes_up: int  # array payload received from clients
    train: dict[str, float]  # aggregated train metrics (weighted by num-examples)
    server: dict[str, float]  # held-out users, evaluated on the server
    federated: dict[str, float]  # clients' own test splits, weighted by num-examples
    per_user: tuple[UserScore, ...] = ()
    per_user_summary: PerUserSummary | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # wrapper-specific counters
    evaluate_failures: tuple[ClientFailure, ...] = ()  # clients whose evaluation gave no score

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; per-user rows are left to ``per_user.csv``."""
        data = asdict(self)
        data.pop("per_user")
        data["num_failures"] = len(self.failures)
        data["num_evaluate_failures"] = len(self.evaluate_failures)
        data["num_declines"] = len(self.declines)
        return data


class RoundSink(Protocol):
    """Receives each completed round (files, plots, experiment tracking, progress)."""

    def on_round(self, record: RoundRecord) -> None: ...

    def close(self) -> None: ...
