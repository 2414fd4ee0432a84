"""Update sanitation: replies the algorithm never aggregates, each rejected with a reason code.

`SanitizedUpdates` wraps the algorithm itself, inside every other wrapper, so it sees updates
as the outer wrappers left them: decoded, opened, unmasked. A train reply is rejected when

- ``no-arrays``: it carries no model;
- ``names``, ``shapes``: its entries differ from what the node was sent (less the personal
  entries its config lists);
- ``dtypes``: an entry does not hold real numbers (its width may differ from what was sent:
  aggregation turns integer buffers into floats, codecs change float widths);
- ``non-finite``: an entry holds NaN or infinity;
- ``norm`` (with ``max_update_norm``): the update moves the node's model by more than that
  L2 norm;
- ``num-examples``: its example count is missing, negative or not a number.

No update stands for more examples than its node holds: an example count above the windows
the node enrolled with (`strategies.enrollment`) is cut to that count (``capped``), and so is
one above ``max_examples_ratio`` times the fleet's median enrolled count, so that a node
cannot enroll its way to a larger weight either. A node that did not enroll is cut to that
ratio times the round's median count. Evaluation replies' counts, which weight the
federated scores, are cut the same way (``capped-evaluate``), and a reply with a missing,
negative or non-finite count is left out of those scores (``evaluate-dropped``). A
secure-sum reply (one aggregate standing for many nodes, `strategies.summed`) is checked for
finite values only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PERSONAL_NAMES_KEY,
    SECURE_SUM_KEY,
    arrays_to_numpy,
    metric_value,
)
from strategies.run_info import FleetDirectory
from strategies.wrapper import StrategyWrapper

Layout = dict[str, tuple[tuple[int, ...], str]]  # entry -> (shape, dtype)
REAL_KINDS = "biuf"  # numpy dtype kinds of real numbers (bool, int, uint, float)


def layout_of(arrays: ArrayRecord, personal: Iterable[str] = ()) -> Layout:
    """Shape and dtype of every entry of ``arrays`` a reply returns (personal entries stay on
    the node)."""
    kept = set(personal)
    return {n: (tuple(a.shape), str(a.dtype)) for n, a in arrays.items() if n not in kept}


def defect(sent: Layout, got: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """(reason code, detail) when ``got`` does not match the ``sent`` layout or is not finite."""
    missing, extra = sorted(set(sent) - set(got)), sorted(set(got) - set(sent))
    if missing or extra:
        return "names", f"missing {missing[:5]}, extra {extra[:5]}"
    for name, (shape, dtype) in sent.items():
        if tuple(got[name].shape) != shape:
            return "shapes", f"{name} is {tuple(got[name].shape)}, the node was sent {shape}"
        if got[name].dtype.kind not in REAL_KINDS:
            return "dtypes", f"{name} is {got[name].dtype}, the node was sent {dtype}"
    return non_finite(got)


def non_finite(arrays: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """("non-finite", detail) for the first entry holding NaN or infinity, else None."""
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return "non-finite", f"{name} holds {int((~np.isfinite(array)).sum())} NaN/inf values"
    return None


def update_norm(sent: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """L2 norm of ``got - sent`` over the floating-point entries ``got`` returns."""
    squares = sum(
        float(np.square(got[n].astype(np.float64) - sent[n].astype(np.float64)).sum())
        for n in got
        if np.issubdtype(got[n].dtype, np.floating)
    )
    return math.sqrt(squares)


class SanitizedUpdates(StrategyWrapper):
    """Wraps the algorithm: rejects malformed, non-finite or oversized updates (see module).

    Parameters
    ----------
    strategy : Strategy
        The algorithm (the innermost strategy).
    directory : FleetDirectory
        The enrolled nodes: their window counts bound their example counts.
    max_update_norm : float | None
        Largest L2 norm of an update (reply minus what the node was sent); None: no bound.
    max_examples_ratio : float
        An example count is cut to this multiple of the fleet's median enrolled count (of the
        round's median count, for a node that did not enroll).
    """

    prefix = "sanitize"

    def __init__(
        self,
        strategy: Strategy,
        directory: FleetDirectory,
        max_update_norm: float | None = None,
        max_examples_ratio: float = 10.0,
    ) -> None:
        super().__init__(strategy)
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0 or None, got {max_update_norm}")
        if not max_examples_ratio >= 1:
            raise ValueError(f"max_examples_ratio must be >= 1, got {max_examples_ratio}")
        self.directory = directory
        self.max_update_norm = max_update_norm
        self.max_examples_ratio = float(max_examples_ratio)
        self.weight_key = str(getattr(strategy, "weighted_by_key", "num-examples"))
        self.arrays_key = str(getattr(strategy, "arrayrecord_key", ARRAYS_KEY))
        self.config_key = str(getattr(strategy, "configrecord_key", CONFIG_KEY))
        self._layouts: dict[int, Layout] = {}
        self._sent: dict[int, dict[str, np.ndarray]] = {}

    def summary(self) -> None:
        bound = "none" if self.max_update_norm is None else f"{self.max_update_norm:g}"
        log(INFO, "\t├──> Sanitized updates (norm bound %s, examples <= enrolled windows, "
            "<= %gx median) around:",
            bound, self.max_examples_ratio)  # fmt: skip
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.start_round()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._layouts, self._sent = {}, {}
        for message in messages:
            node, sent = message.metadata.dst_node_id, message.content.array_records
            node_config = message.content.config_records.get(self.config_key, ConfigRecord())
            personal = node_config.get(PERSONAL_NAMES_KEY, [])
            if self.arrays_key in sent:
                layout = layout_of(sent[self.arrays_key], personal)  # type: ignore[arg-type]
                self._layouts[node] = layout
                if self.max_update_norm is not None:
                    self._sent[node] = arrays_to_numpy(sent[self.arrays_key])
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept: list[Message] = []
        for reply in replies:
            if reply.has_error():
                kept.append(reply)
                continue
            problem = self._problem(reply)
            if problem is not None:
                self.reject(reply.metadata.src_node_id, *problem)
                continue
            self.accept()
            kept.append(reply)
        self._cap_examples([m for m in kept if not m.has_error()])
        return self.strategy.aggregate_train(server_round, kept)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Evaluation replies' example counts weight the federated scores: a reply whose
        count is missing, negative or not finite is left out of them (``evaluate-dropped``),
        and the others get the same bounds (``capped-evaluate``)."""
        replies = list(replies)
        kept = [m for m in replies if m.has_error() or self._count_problem(m) is None]
        if len(kept) < len(replies):
            self.count("evaluate-dropped", len(replies) - len(kept))
        self._cap_examples([m for m in kept if not m.has_error()], "capped-evaluate")
        return self.strategy.aggregate_evaluate(server_round, kept)

    def _problem(self, reply: Message) -> tuple[str, str] | None:
        content = reply.content
        if self.arrays_key not in content.array_records:
            return "no-arrays", f"the reply has no {self.arrays_key!r} ArrayRecord"
        got = arrays_to_numpy(content.array_records[self.arrays_key])
        if SECURE_SUM_KEY in content.config_records:
            return non_finite(got)
        node = reply.metadata.src_node_id
        if node not in self._layouts:
            return "unexpected-node", "this node was not sent a model this round"
        problem = defect(self._layouts[node], got)
        if problem is not None:
            return problem
        if self.max_update_norm is not None:
            norm = update_norm(self._sent[node], got)
            if norm > self.max_update_norm:
                return "norm", f"update norm {norm:.4g} exceeds {self.max_update_norm:g}"
        return self._count_problem(reply)

    def _count_problem(self, reply: Message) -> tuple[str, str] | None:
        """("num-examples", detail) when the reply's example count is missing, negative or not
        finite, else None."""
        metrics = reply.content.metric_records.get(METRICS_KEY)
        weight = None if metrics is None else metrics.get(self.weight_key)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            return "num-examples", f"{self.weight_key!r} is missing or negative ({weight!r})"
        if not math.isfinite(weight):
            return "num-examples", f"{self.weight_key!r} is not finite ({weight!r})"
        return None

    def _cap_examples(self, replies: list[Message], counter: str = "capped") -> None:
        """Cut every example count above its node's bound (see module) to that bound."""
        counted = [m for m in replies if SECURE_SUM_KEY not in m.content.config_records]
        if not counted:
            return
        counts = [metric_value(m.content, self.weight_key) for m in counted]
        unenrolled_bound = self.max_examples_ratio * statistics.median(counts)
        for message, count in zip(counted, counts, strict=True):
            node = message.metadata.src_node_id
            bound = self.directory.example_bound(node, self.max_examples_ratio)
            bound = unenrolled_bound if bound is None else bound
            if count > bound:
                record = message.content.metric_records[METRICS_KEY]
                whole = isinstance(record[self.weight_key], int)
                record[self.weight_key] = int(bound) if whole else bound
                self.count(counter)
                log(INFO, "sanitize: node %d claimed %g examples, cut to %g", node, count, bound)
