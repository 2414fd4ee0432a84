"""Differential privacy around the algorithm: Poisson sampling and the run's privacy ledger.

Flower's DP wrappers (`flwr.serverapp.strategy`) clip and noise; `experiments.compose` puts
them around the algorithm, from the ``privacy`` config. Around them sit:

- `UniformWeights`: every update counts once in the mean;
- `PoissonSampling`: each enrolled client takes part in a round with probability
  ``sample_rate``, independently and reproducibly (seeded by the run seed, round and
  partition), as the accountant's Poisson amplification assumes;
- `PrivacyAccounting`: before each round, epsilon after that round
  (`fedhar.privacy.accounting`) is logged as ``privacy/epsilon`` (with ``privacy/delta``);
  a round that would take epsilon over ``epsilon_budget`` is not started: `BudgetExhausted`
  ends the run after its last completed (and checkpointed) round.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.privacy.accounting import ClientLevelDp
from fedhar.seeding import derive_seed
from fedhar.wire import (
    METRICS_KEY,
    SECURE_SUM_KEY,
    arrays_to_numpy,
    metric_value,
    numpy_to_arrays,
)
from strategies.run_info import RunInfo
from strategies.wrapper import StrategyWrapper


class BudgetExhausted(Exception):
    """The next round would spend more privacy than the run's epsilon budget allows."""

    def __init__(self, server_round: int, epsilon: float, budget: float, spent: float) -> None:
        super().__init__(
            f"round {server_round} would take epsilon to {epsilon:.3f}, over the budget "
            f"{budget:g} (spent after round {server_round - 1}: {spent:.3f}); the run stops "
            "after its last completed round"
        )
        self.server_round = server_round


class UniformWeights(StrategyWrapper):
    """The mean DP's noise is calibrated to: each update once, over a fixed denominator.

    Each reply's ``num-examples`` becomes 1 on its way to the algorithm, so FedAvg-style
    strategies average updates (and train metrics) without weights. The algorithm divides by
    the k updates that arrived; the noise assumes the expected cohort, so the averaged update
    is rescaled by k / ``expected`` (a reply standing for several senders, secure
    aggregation's sum, counts as its ``num-examples``).
    """

    prefix = "privacy"
    counts_replies = False

    def __init__(self, strategy: Strategy, expected: int) -> None:
        super().__init__(strategy)
        if expected < 1:
            raise ValueError(f"the expected cohort must be at least 1, got {expected}")
        self.expected = int(expected)
        self._sent: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = arrays_to_numpy(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        uniform, updates = [], 0
        for reply in replies:
            if not reply.has_error() and METRICS_KEY in reply.content.metric_records:
                content = RecordDict(dict(reply.content.items()))
                weights = MetricRecord(dict(content.metric_records[METRICS_KEY]))
                stands_for = SECURE_SUM_KEY in content.config_records
                updates += int(metric_value(content, "num-examples")) if stands_for else 1
                weights["num-examples"] = 1
                content[METRICS_KEY] = weights
                reply = Message(metadata=reply.metadata, content=content)  # type: ignore[call-overload]
            uniform.append(reply)
        arrays, metrics = self.strategy.aggregate_train(server_round, uniform)
        if arrays is None or not updates:
            return arrays, metrics
        scale = updates / self.expected
        self.count("updates", updates)
        rescaled = {
            name: (self._sent[name] + (value - self._sent[name]) * scale).astype(value.dtype)
            if name in self._sent and np.issubdtype(value.dtype, np.floating)
            else value
            for name, value in arrays_to_numpy(arrays).items()
        }
        return numpy_to_arrays(rescaled), metrics


class PoissonSampling(StrategyWrapper):
    """Keeps each of the inner strategy's train messages with probability ``sample_rate``.

    The inner strategy must send to every node (``fraction_train=1.0``) for the sampling to be
    Poisson over the whole fleet.
    """

    prefix = "privacy"

    def __init__(self, strategy: Strategy, run: RunInfo, sample_rate: float) -> None:
        super().__init__(strategy)
        if not 0 < sample_rate <= 1:
            raise ValueError(f"privacy.sample_rate={sample_rate} must lie in (0, 1]")
        self.run, self.sample_rate = run, float(sample_rate)

    def _keeps(self, node_id: int, server_round: int) -> bool:
        info = self.run.directory.nodes.get(node_id)
        partition = info.partition_id if info is not None else node_id % 2**31
        draw = np.random.default_rng(derive_seed(self.run.seed, server_round, partition, 7))
        return bool(draw.random() < self.sample_rate)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        kept = [m for m in messages if self._keeps(m.metadata.dst_node_id, server_round)]
        log(
            INFO,
            "Poisson sampling (rate %g): %d of %d nodes train in round %d",
            self.sample_rate,
            len(kept),
            len(messages),
            server_round,
        )
        return kept


class PrivacyAccounting(StrategyWrapper):
    """Logs epsilon every round and stops the run before it would exceed ``epsilon_budget``."""

    prefix = "privacy"
    counts_replies = False  # it keeps no reply from aggregation

    def __init__(
        self, strategy: Strategy, mechanism: ClientLevelDp, epsilon_budget: float | None = None
    ) -> None:
        super().__init__(strategy)
        if epsilon_budget is not None and not epsilon_budget > 0:
            raise ValueError(f"privacy.epsilon_budget={epsilon_budget} must be positive or null")
        self.mechanism, self.epsilon_budget = mechanism, epsilon_budget

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> DP accounting: %s sampling, noise multiplier %g, delta %g, budget %s",
            self.mechanism.sampling,
            self.mechanism.noise_multiplier,
            self.mechanism.delta,
            self.epsilon_budget,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        epsilon = self.mechanism.epsilon(server_round)
        if self.epsilon_budget is not None and epsilon > self.epsilon_budget:
            spent = self.mechanism.epsilon(server_round - 1)
            raise BudgetExhausted(server_round, epsilon, self.epsilon_budget, spent)
        self.start_round()
        self.count("epsilon", epsilon)
        self.count("delta", self.mechanism.delta)
        return self.strategy.configure_train(server_round, arrays, config, grid)
