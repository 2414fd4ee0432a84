"""Reply messages for strategy and client tests, built without a Grid or Ray."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.app.metadata import Metadata

from fedhar.wire import ARRAYS_KEY, ClientIdentity, TrainReport, arrays_to_state, train_reply


def make_reply(
    content: RecordDict | None = None,
    *,
    node_id: int = 1,
    error_reason: str | None = None,
    message_type: str = MessageType.TRAIN,
) -> Message:
    """A reply from ``node_id`` carrying ``content``, or an error if ``error_reason`` is set."""
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="instruction",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type=message_type,
    )
    if error_reason is not None:
        return Message(metadata=metadata, error=Error(code=0, reason=error_reason))
    assert content is not None
    return Message(metadata=metadata, content=content)


def trained_reply(
    msg: Message,
    update: Callable[[str, torch.Tensor], torch.Tensor],
    num_examples: int,
    trained: list[str] | None = None,
) -> RecordDict:
    """A reply to ``msg`` as a client would send it, with ``update`` applied to each entry."""
    state = {k: update(k, v) for k, v in arrays_to_state(msg.content[ARRAYS_KEY]).items()}
    report = TrainReport(num_examples, 1.0, 1, 0.1)
    identity = ClientIdentity(f"u{msg.metadata.dst_node_id}", "mcu")
    return train_reply(state, report, identity, list(state) if trained is None else trained)
