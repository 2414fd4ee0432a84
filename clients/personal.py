"""Client mod for personal layers (FedPer, FedRep, FedBN): they stay on the node.

The server names the personal entries in the config (``personal-names``). Before the handler
runs, the mod fills them into the incoming arrays from the node's ``context.state`` (the first
time, the server's copy is used). After a train handler replies, the mod saves them back to
``context.state`` and strips them from the reply and from its list of trained entries, so
they never leave the node.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedhar.wire import (
    ARRAYS_KEY,
    PERSONAL_STATE_KEY,
    TRAINED_KEY,
    personal_names,
    trained_names,
)


class PersonalLayersMissing(ValueError):
    """A personal entry is neither saved on the node nor sent by the server."""


def _fill(arrays: ArrayRecord, saved: ArrayRecord, names: list[str]) -> ArrayRecord:
    """The incoming arrays with every personal entry taken from ``saved`` where it exists."""
    missing = [n for n in names if n not in saved and n not in arrays]
    if missing:
        raise PersonalLayersMissing(
            f"personal entries {missing[:5]} are neither saved on this node nor in the message; "
            "the server must send them to a node until it has replied once"
        )
    filled = ArrayRecord({k: saved.get(k, v) for k, v in arrays.items()})
    for name in names:
        if name not in filled:
            filled[name] = saved[name]
    return filled


def _keep(reply: Message, names: list[str], context: Context) -> None:
    """Save the reply's personal entries on the node and take them out of the reply."""
    arrays = reply.content.array_records[ARRAYS_KEY]
    personal = set(names)
    context.state[PERSONAL_STATE_KEY] = ArrayRecord(
        {k: v for k, v in arrays.items() if k in personal}
    )
    reply.content[ARRAYS_KEY] = ArrayRecord({k: v for k, v in arrays.items() if k not in personal})
    trained = trained_names(reply.content)
    if trained is not None:
        shared = [n for n in trained if n not in personal]
        reply.content[TRAINED_KEY] = ConfigRecord({"names": shared})


def personal_layers() -> Mod:
    """A Flower mod that keeps the server-named personal entries on the node."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        names = personal_names(msg.content)
        if not names or ARRAYS_KEY not in msg.content.array_records:
            return call_next(msg, context)
        saved = context.state.array_records.get(PERSONAL_STATE_KEY, ArrayRecord())
        msg.content[ARRAYS_KEY] = _fill(msg.content.array_records[ARRAYS_KEY], saved, names)
        reply = call_next(msg, context)
        if not reply.has_error() and ARRAYS_KEY in reply.content.array_records:
            _keep(reply, names, context)
        return reply

    return mod
