"""HeteroFL: each node always trains the leading slice of the widest level it can hold."""

from __future__ import annotations

from fedhar.partial.widths import HeteroFLWidths, WidthPolicy
from strategies.masked import MaskedFedAvg


class HeteroFL(MaskedFedAvg):
    """Static leading-slice sub-models, masked averaging of the overlapping elements.

    A node whose device allows width w trains ``ceil(H * w)`` leading units of every hidden
    dim, every round; the global model keeps every width nested inside it.

    Diao, Ding, Tarokh. "HeteroFL: Computation and Communication Efficient Federated Learning
    for Heterogeneous Clients." ICLR 2021.
    """

    def width_policy(self) -> WidthPolicy:
        """Largest fitting level, offset 0."""
        return HeteroFLWidths(self.levels)
