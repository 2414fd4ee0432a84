"""Flower's DP client mods, applied to train messages only.

``fixedclipping_mod``, ``adaptiveclipping_mod`` and ``LocalDpMod`` expect a train message
(one ArrayRecord in, one out) and answer anything else with an error; fedhar nodes also answer
enrollment queries and evaluation messages, which pass by them here.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import Mod

from fedhar.wire import message_kind


def train_only(mod: Mod) -> Mod:
    """``mod`` on train messages; every other message goes straight to the next handler."""

    def wrapped(
        msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if message_kind(msg) != MessageType.TRAIN:
            return call_next(msg, context)
        return mod(msg, context, call_next)

    return wrapped
