"""FedRolex: the sub-model window rolls over the hidden units, one step per round."""

from __future__ import annotations

from fedhar.partial.widths import FedRolexWidths, WidthPolicy
from strategies.masked import MaskedFedAvg


class FedRolex(MaskedFedAvg):
    """Rolling sub-model extraction: every unit of the global model is trained over time.

    In round r a hidden dim of size H gives a node of width w the units
    ``{r mod H, ..., (r + ceil(H * w) - 1) mod H}``, so small devices train every part of the
    global model rather than only its leading units.

    Alam, Liu, Yan, Zhang. "FedRolex: Model-Heterogeneous Federated Learning with Rolling
    Sub-Model Extraction." NeurIPS 2022.
    """

    def width_policy(self) -> WidthPolicy:
        """Largest fitting level, window offset = round."""
        return FedRolexWidths(self.levels)
