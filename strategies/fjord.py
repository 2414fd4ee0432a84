"""FjORD: ordered dropout, a nested width drawn per node and round from what the node fits."""

from __future__ import annotations

from fedhar.partial.widths import FjORDWidths, WidthPolicy
from strategies.masked import MaskedFedAvg


class FjORD(MaskedFedAvg):
    """Ordered dropout over nested leading slices.

    Each round, a node trains a width drawn uniformly from the levels its device can hold,
    seeded by (run seed, round, node), so the global model stays good at every width. The
    paper draws per local batch; here the draw is per round (`fedhar.partial.widths.FjORDWidths`).

    Horváth, Laskaridis, Almeida, Leontiadis, Venieris, Lane. "FjORD: Fair and Accurate
    Federated Learning under Heterogeneous Targets with Ordered Dropout." NeurIPS 2021.
    """

    def width_policy(self) -> WidthPolicy:
        """Uniform draw over the fitting levels, seeded by the run seed."""
        return FjORDWidths(self.levels, seed=0 if self.run is None else self.run.seed)
