"""Differential privacy around the algorithm: Poisson sampling and the run's privacy ledger.

Flower's DP wrappers (`flwr.serverapp.strategy`) clip and noise; `experiments.compose` puts
them around the algorithm, from the ``privacy`` config. Around them sit:

- `UniformWeights`: every update counts once in the mean;
- `ValidStatistics`: BatchNorm variances the noise pushed below zero are clamped (post-
  processing of the released model);
- `PoissonSampling`: each enrolled client takes part in a round with probability
  ``sample_rate``, independently and reproducibly (seeded by the run seed, round and
  partition), as the accountant's Poisson amplification assumes;
- `PartialModelDp`: central DP for partial-model strategies, clipping and noising per
  element by the clients each element was sent to;
- `PrivacyAccounting`: before each round, epsilon after that round
  (`fedhar.privacy.accounting`) is logged as ``privacy/epsilon`` (with ``privacy/delta``);
  a round that would take epsilon over ``epsilon_budget`` is not started: `BudgetExhausted`
  ends the run after its last completed (and checkpointed) round.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.models import STEP_COUNTER
from fedhar.partial.spec import ParamSlice
from fedhar.privacy.accounting import ClientLevelDp
from fedhar.privacy.observe import update_norm
from fedhar.seeding import derive_seed
from fedhar.wire import (
    ARRAYS_KEY,
    CLIENT_KEY,
    METRICS_KEY,
    SECURE_SUM_KEY,
    arrays_to_numpy,
    arrays_to_state,
    metric_value,
    numpy_to_arrays,
    trained_names,
)
from strategies.run_info import RunInfo
from strategies.summed import summed_reply
from strategies.wrapper import StrategyWrapper, innermost


class BudgetExhausted(Exception):
    """The next round would spend more privacy than the run's epsilon budget allows."""

    def __init__(self, server_round: int, epsilon: float, budget: float, spent: float) -> None:
        super().__init__(
            f"round {server_round} would take epsilon to {epsilon:.3f}, over the budget "
            f"{budget:g} (spent after round {server_round - 1}: {spent:.3f}); the run stops "
            "after its last completed round"
        )
        self.server_round = server_round


class DeviceBudgetsExhausted(BudgetExhausted):
    """Every device's next DP-SGD update would take it past its epsilon budget."""

    def __init__(self, server_round: int, devices: int) -> None:
        Exception.__init__(
            self,
            f"round {server_round}: each of the {devices} devices would pass its DP-SGD epsilon "
            "budget with its next update; the run stops after its last completed round",
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
        self.start_round()
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


class ValidStatistics(StrategyWrapper):
    """Clamps BatchNorm running variances that DP noise pushed below ``floor``.

    Noise on a variance near zero can make it negative, and the model's evaluation NaN.
    Clamping the released model is post-processing: it costs no privacy.
    """

    prefix = "privacy"
    counts_replies = False

    def __init__(self, strategy: Strategy, floor: float = 1e-5) -> None:
        super().__init__(strategy)
        self.floor = floor

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.start_round()
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        state = arrays_to_numpy(arrays)
        for name, value in state.items():
            if name.endswith("running_var"):
                self.count("clamped-variances", float((value < self.floor).sum()))
                state[name] = np.maximum(value, self.floor).astype(value.dtype)
        return numpy_to_arrays(state), metrics


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


class PartialModelDp(StrategyWrapper):
    """Central DP around masked partial-model aggregation: clip each update, noise each
    element by the clients it was sent to.

    Flower's DP wrappers assume every sampled client updates every element. Here each reply's
    update (its trained entries, minus what its node was sent) is clipped to
    ``clipping_norm`` in L2; per element, the clipped updates are summed, Gaussian noise of std
    ``noise_multiplier * clipping_norm`` is added to the sum, and the sum is divided by the
    number of sampled nodes the element was sent to (a fixed denominator, as in
    `UniformWeights`). Elements sent to nobody are left as they were. The sum's sensitivity
    is a single clipped update, as in FedAvg, so the run's accounting is FedAvg's. The inner
    strategy, which must expose ``coordinate_slices`` (`strategies.masked.MaskedFedAvg`),
    gets the result as one ``secure-sum`` reply. Noise is seeded from the run seed and round:
    reproducible, for simulation.
    """

    prefix = "privacy"
    counts_replies = False

    def __init__(
        self, strategy: Strategy, run: RunInfo, noise_multiplier: float, clipping_norm: float
    ) -> None:
        super().__init__(strategy)
        core = innermost(strategy)
        if not hasattr(core, "coordinate_slices"):
            raise ValueError("PartialModelDp needs a partial-model strategy (coordinate_slices)")
        if noise_multiplier < 0 or not clipping_norm > 0:
            raise ValueError("noise_multiplier must be >= 0 and clipping_norm > 0")
        core.secure_sums = True  # type: ignore[attr-defined]
        self._slices = core.coordinate_slices
        self.run, self.noise_multiplier, self.clipping_norm = run, noise_multiplier, clipping_norm
        self._state: dict[str, torch.Tensor] = {}  # the global model sent this round
        self._global: dict[str, torch.Tensor] = {}  # its float entries, the ones DP covers
        self._sent: dict[int, dict[str, ParamSlice]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.start_round()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._state = arrays_to_state(arrays)
        self._global = {
            n: t
            for n, t in self._state.items()
            if t.is_floating_point() and not n.endswith(STEP_COUNTER)
        }
        self._sent = {}
        for message in messages:
            slices = self._slices(message.metadata.dst_node_id)
            if slices is not None:
                self._sent[message.metadata.dst_node_id] = slices
        return messages

    def _clipped_update(self, reply: Message) -> dict[str, tuple[ParamSlice, torch.Tensor]]:
        """The reply's clipped update per trained entry, with the entry's slice."""
        slices = self._sent[reply.metadata.src_node_id]
        state = arrays_to_state(reply.content.array_records[ARRAYS_KEY])
        trained = trained_names(reply.content)
        update = {}
        for name, where in slices.items():
            if (
                name not in self._global
                or name not in state
                or (trained is not None and name not in trained)
            ):
                continue
            if tuple(state[name].shape) != where.shape:
                raise ValueError(f"{name} is {tuple(state[name].shape)}, sent {where.shape}")
            sent = self._global[name].double()[where.index_grid()]
            update[name] = (where, state[name].double() - sent)
        norm = update_norm({name: d for name, (_, d) in update.items()})
        scale = min(1.0, self.clipping_norm / max(norm, 1e-12))
        if scale < 1:
            self.count("clipped")
        return {name: (where, d * scale) for name, (where, d) in update.items()}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        totals = {n: torch.zeros(t.shape, dtype=torch.float64) for n, t in self._global.items()}
        cohort = {n: torch.zeros(t.shape, dtype=torch.float64) for n, t in self._global.items()}
        for slices in self._sent.values():
            for name, where in slices.items():
                if name in cohort:
                    cohort[name][where.index_grid()] += 1
        accepted: dict[int, Message] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in self._sent:
                continue
            if ARRAYS_KEY not in reply.content.array_records:
                continue  # a decline
            try:
                update = self._clipped_update(reply)
            except ValueError as mismatch:
                self.reject(node, "shapes", str(mismatch))
                continue
            for name, (where, delta) in update.items():
                totals[name][where.index_grid()] += delta
            accepted[node] = reply
        if not accepted:
            return self.strategy.aggregate_train(server_round, [])
        noise = torch.Generator().manual_seed(derive_seed(self.run.seed, server_round, 11))
        std = self.noise_multiplier * self.clipping_norm
        new_state = dict(self._state)
        for name, base in self._global.items():
            sent = cohort[name]
            noisy = totals[name] + std * torch.randn(
                base.shape, generator=noise, dtype=torch.float64
            )
            mean = torch.where(sent > 0, noisy / sent.clamp(min=1), torch.zeros_like(noisy))
            new_state[name] = (base.double() + mean).to(base.dtype)
        self.count("updates", len(accepted))
        reply = summed_reply(new_state, accepted, float(len(accepted)))
        return self.strategy.aggregate_train(server_round, [reply])


class SampleLevelAccounting(StrategyWrapper):
    """Logs the largest sample-level DP-SGD epsilon any device has reported, every round.

    Devices keep their own ledgers (`clients.app.train_user_private`), decline a local update
    that would take them past their budget, and report their epsilon after the update and
    after one more like it. Once every node has reported and each one's next update would pass
    the budget, the run stops before the next round (`DeviceBudgetsExhausted`).
    """

    prefix = "privacy"
    counts_replies = False

    def __init__(self, strategy: Strategy, delta: float, epsilon_budget: float | None) -> None:
        super().__init__(strategy)
        self.delta, self.epsilon_budget = delta, epsilon_budget
        self._epsilon: dict[str, float] = {}  # user -> epsilon after their latest update
        self._next: dict[str, float] = {}  # user -> epsilon after one more such update

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = len(list(grid.get_node_ids()))
        budget = self.epsilon_budget
        if (
            budget is not None
            and len(self._next) >= nodes > 0
            and all(epsilon > budget for epsilon in self._next.values())
        ):
            raise DeviceBudgetsExhausted(server_round, len(self._next))
        self.start_round()
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            content = reply.content if reply.has_content() else None
            if content is None or CLIENT_KEY not in content.config_records:
                continue
            metrics = content.metric_records.get(METRICS_KEY)
            if metrics is not None and "dp-epsilon" in metrics:
                user = str(content.config_records[CLIENT_KEY]["user"])
                self._epsilon[user] = metric_value(content, "dp-epsilon")
                self._next[user] = metric_value(content, "dp-epsilon-next")
        self.count("sample_epsilon_max", max(self._epsilon.values(), default=0.0))
        self.count("delta", self.delta)
        return self.strategy.aggregate_train(server_round, replies)
