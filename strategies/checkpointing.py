"""A strategy wrapper that makes a run resumable and its sampling reproducible.

After every round it saves the global arrays and the inner strategy's state. A resumed run
starts Flower's loop again from round 1, so the wrapper shifts round numbers by the rounds
already done. Before each sampling step it reseeds Python's ``random`` (which Flower's
``sample_nodes`` uses) from the run seed and the round, and shows the strategy the nodes in
partition order (node ids are the runtime's, partitions are the users), so which users train
in round r depends neither on whether the run was interrupted nor on the runtime. Before each
aggregation it reseeds numpy's global generator, from which Flower's DP wrappers draw their
noise, so a resumed DP run adds the same noise as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedhar.checkpoint import Checkpoint, save_checkpoint
from fedhar.seeding import derive_seed
from fedhar.wire import arrays_to_numpy
from strategies.grid_proxy import GridProxy
from strategies.run_info import FleetDirectory
from strategies.wrapper import StrategyWrapper, innermost

# Attributes of Flower's strategies that carry state from round to round (FedOpt family:
# FedAdam, FedYogi, FedAdagrad keep the current arrays and their moment estimates).
STATEFUL_ATTRIBUTES = ("current_arrays", "m_t", "v_t")
_SAMPLE_TRAIN, _SAMPLE_EVALUATE, _AGGREGATE = 1, 2, 3


def export_state(strategy: Strategy) -> dict[str, dict[str, np.ndarray]]:
    core = innermost(strategy)
    return {
        name: dict(value)
        for name in STATEFUL_ATTRIBUTES
        if isinstance(value := getattr(core, name, None), dict)
    }


def restore_state(strategy: Strategy, state: dict[str, dict[str, np.ndarray]]) -> None:
    core = innermost(strategy)
    for name, value in state.items():
        if name not in STATEFUL_ATTRIBUTES:
            raise ValueError(f"checkpoint has unknown strategy state {name!r}")
        setattr(core, name, dict(value))


class PartitionOrderedGrid(GridProxy):
    """``grid`` with its node ids listed in partition order (enrolled nodes first)."""

    def __init__(self, grid: Grid, partitions: Callable[[], dict[int, int]]) -> None:
        super().__init__(grid)
        self.partitions = partitions  # node id -> partition id

    def get_node_ids(self) -> list[int]:
        known = self.partitions()
        return sorted(self.grid.get_node_ids(), key=lambda n: (n not in known, known.get(n, n)))


class Checkpointing(StrategyWrapper):
    """Wraps ``strategy``; saves ``run_dir/checkpoint.pt`` at the end of every round.

    Parameters
    ----------
    strategy : Strategy
        The strategy (or wrapper stack) to run.
    run_dir : Path
        Where the checkpoint lives.
    seed : int
        Run seed; node sampling in round r is seeded with (seed, r).
    rounds_done : int
        Rounds completed before this start (0 for a fresh run).
    directory : FleetDirectory | None
        The enrolled nodes; sampling sees them in partition order. None: the grid's order.
    run_id : str
        The run's id, kept in the checkpoint so that a resumed run keeps it.
    """

    def __init__(
        self,
        strategy: Strategy,
        run_dir: Path,
        seed: int,
        rounds_done: int = 0,
        directory: FleetDirectory | None = None,
        run_id: str = "",
    ):
        super().__init__(strategy)
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.rounds_done = rounds_done
        self.directory = directory
        self._arrays: ArrayRecord | None = None

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> Checkpointing to %s (resuming after round %d)",
            self.run_dir,
            self.rounds_done,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        absolute = server_round + self.rounds_done
        random.seed(derive_seed(self.seed, absolute, _SAMPLE_TRAIN))
        return self.strategy.configure_train(absolute, arrays, config, self._ordered(grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        absolute = server_round + self.rounds_done
        np.random.seed(derive_seed(self.seed, absolute, _AGGREGATE))  # Flower's DP noise draws
        return self.strategy.aggregate_train(absolute, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        absolute = server_round + self.rounds_done
        self._arrays = arrays
        random.seed(derive_seed(self.seed, absolute, _SAMPLE_EVALUATE))
        return self.strategy.configure_evaluate(absolute, arrays, config, self._ordered(grid))

    def _ordered(self, grid: Grid) -> Grid:
        directory = self.directory
        if directory is None:
            return grid
        return PartitionOrderedGrid(
            grid, lambda: {n: info.partition_id for n, info in directory.nodes.items()}
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        absolute = server_round + self.rounds_done
        metrics = self.strategy.aggregate_evaluate(absolute, replies)
        if self._arrays is not None:
            checkpoint = Checkpoint(
                absolute, arrays_to_numpy(self._arrays), export_state(self), self.run_id
            )
            save_checkpoint(self.run_dir, checkpoint)
        return metrics
