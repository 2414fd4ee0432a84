"""The width grid, and which sub-model width (and window offset) a client trains each round.

``WIDTH_LEVELS`` is the one grid of widths: the planner sizes devices on it, policies hand it
out, the server scores it. Policies are pure and deterministic: one maps a client's largest
affordable width (from its memory plan), the round and the client's node id to a
`WidthAssignment`; `fedhar.partial.spec.slice_width` turns that into a sub-model spec. The
offset is one integer for the whole model: a hidden dim of size H starts its window at
``offset mod H``, so consecutive layers stay consistent.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Protocol

WIDTH_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # the one width grid (HeteroFL's)


@dataclass(frozen=True)
class WidthAssignment:
    """A client's sub-model for one round: width factor and rolling-window offset."""

    width: float
    offset: int = 0  # 0 keeps the leading units of every hidden dim


class WidthPolicy(Protocol):
    """Anything that assigns a width to a client for a round."""

    def assign(self, max_width: float, server_round: int, node_id: int) -> WidthAssignment:
        """Width and offset for ``node_id`` in ``server_round`` given its largest width."""
        ...


def _check_levels(levels: tuple[float, ...]) -> None:
    if not levels or any(not 0.0 < w <= 1.0 for w in levels):
        raise ValueError(f"levels must be a non-empty tuple of widths in (0, 1], got {levels}")
    if list(levels) != sorted(set(levels)):
        raise ValueError(f"levels must be strictly increasing, got {levels}")


def allowed_levels(max_width: float, levels: tuple[float, ...]) -> tuple[float, ...]:
    """The levels a client of ``max_width`` can hold, smallest first.

    Raises
    ------
    ValueError
        When even the smallest level exceeds ``max_width``: the client cannot take part.
    """
    _check_levels(levels)
    fitting = tuple(w for w in levels if w <= max_width)
    if not fitting:
        raise ValueError(
            f"max width {max_width} is below the smallest level {levels[0]}; leave this client "
            "out of the round or add a smaller level"
        )
    return fitting


def _check_round(server_round: int) -> None:
    if server_round < 0:
        raise ValueError(f"server_round must be >= 0, got {server_round}")


@dataclass(frozen=True)
class HeteroFLWidths:
    """Static leading slices: each client always trains the largest level it fits.

    Diao, Ding, Tarokh. "HeteroFL: Computation and Communication Efficient Federated Learning
    for Heterogeneous Clients." ICLR 2021.
    """

    levels: tuple[float, ...] = WIDTH_LEVELS

    def assign(self, max_width: float, server_round: int, node_id: int) -> WidthAssignment:
        """Largest fitting level, offset 0."""
        _check_round(server_round)
        return WidthAssignment(allowed_levels(max_width, self.levels)[-1], 0)


@dataclass(frozen=True)
class FedRolexWidths:
    """Rolling sub-model extraction: the window over each hidden dim advances every round.

    In round r a dim of size H keeps units ``{r mod H, ..., (r + h - 1) mod H}``, so over H
    rounds every unit is trained by every width.

    Alam, Liu, Yan, Zhang. "FedRolex: Model-Heterogeneous Federated Learning with Rolling
    Sub-Model Extraction." NeurIPS 2022.
    """

    levels: tuple[float, ...] = WIDTH_LEVELS

    def assign(self, max_width: float, server_round: int, node_id: int) -> WidthAssignment:
        """Largest fitting level, offset = round (taken mod H per dim when slicing)."""
        _check_round(server_round)
        return WidthAssignment(allowed_levels(max_width, self.levels)[-1], server_round)


@dataclass(frozen=True)
class FjORDWidths:
    """Ordered dropout: nested leading slices, width drawn uniformly from the fitting levels.

    The draw is seeded by (seed, round, node), one per client per round (the paper draws per
    local batch; a round-level draw keeps the sub-model fixed within a local update).

    Horváth, Laskaridis, Almeida, Leontiadis, Venieris, Lane. "FjORD: Fair and Accurate
    Federated Learning under Heterogeneous Targets with Ordered Dropout." NeurIPS 2021.
    """

    levels: tuple[float, ...] = WIDTH_LEVELS
    seed: int = 0

    def assign(self, max_width: float, server_round: int, node_id: int) -> WidthAssignment:
        """Uniform draw over levels <= ``max_width``, offset 0."""
        _check_round(server_round)
        fitting = allowed_levels(max_width, self.levels)
        key = f"fjord/{self.seed}/{server_round}/{node_id}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        return WidthAssignment(rng.choice(fitting), 0)
