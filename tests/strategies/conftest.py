"""Builds reply messages for strategy tests without a Grid or Ray."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.app.metadata import Metadata

ReplyFactory = Callable[..., Message]


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


@pytest.fixture
def reply() -> ReplyFactory:
    return make_reply
