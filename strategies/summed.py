"""One reply that stands for a round's senders: how an aggregate reaches the inner strategy.

Secure aggregation (`strategies.secagg`) and partial-model DP (`strategies.privacy`) compute
the round's new model themselves; the algorithm under them (FedAvg, FedAdam, MaskedFedAvg)
receives it as a single reply, marked ``secure-sum`` with the senders' node ids.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedhar.wire import ARRAYS_KEY, METRICS_KEY, SECURE_SUM_KEY, state_to_arrays


def summed_reply(
    new_state: dict[str, torch.Tensor], accepted: Mapping[int, Message], weight: float
) -> Message:
    """The model ``new_state`` with the senders' metrics averaged and ``weight`` examples."""
    contents = [
        RecordDict({METRICS_KEY: accepted[n].content[METRICS_KEY]}) for n in sorted(accepted)
    ]
    metrics = aggregate_metricrecords(contents, "num-examples")
    metrics["num-examples"] = weight
    content = RecordDict(
        {
            ARRAYS_KEY: state_to_arrays(new_state),
            METRICS_KEY: metrics,
            SECURE_SUM_KEY: ConfigRecord({"senders": sorted(accepted)}),
        }
    )
    first = accepted[min(accepted)]
    return Message(metadata=first.metadata, content=content)  # type: ignore[call-overload]
