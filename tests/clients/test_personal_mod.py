"""Personal-layers mod: personal entries persist in context.state and never leave the node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from clients.personal import PersonalLayersMissing, personal_layers
from fedhar.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    PERSONAL_NAMES_KEY,
    PERSONAL_STATE_KEY,
    ClientIdentity,
    TrainReport,
    arrays_to_state,
    state_to_arrays,
    train_reply,
    trained_names,
)
from tests.helpers.identity import task_identity

PERSONAL = ["head.weight", "head.bias"]


@pytest.fixture(autouse=True)
def _task() -> Iterator[None]:
    with task_identity(node_id=0):
        yield


def _message(state: dict[str, torch.Tensor], personal: list[str] = PERSONAL) -> Message:
    config = ConfigRecord({"server-round": 1, PERSONAL_NAMES_KEY: personal})
    content = RecordDict({ARRAYS_KEY: state_to_arrays(state), CONFIG_KEY: config})
    return Message(content, 5, MessageType.TRAIN)


class Handler:
    """A train handler that adds 1 to every entry and records what it was given."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def __call__(self, msg: Message, context: Context) -> Message:
        state = arrays_to_state(msg.content[ARRAYS_KEY])
        self.seen.append(state)
        new = {k: v + 1 for k, v in state.items()}
        report = TrainReport(10, 0.5, 1, 0.1)
        content = train_reply(new, report, ClientIdentity("u", "mcu"), list(new))
        return Message(content, reply_to=msg)


def _context() -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})


def _global() -> dict[str, torch.Tensor]:
    return {
        "body.weight": torch.zeros(3, 2),
        "head.weight": torch.full((4, 3), 7.0),
        "head.bias": torch.full((4,), 7.0),
    }


def test_personal_entries_are_kept_restored_and_never_sent() -> None:
    mod, handler, context = personal_layers(), Handler(), _context()
    first = mod(_message(_global()), context, handler)
    assert list(first.content[ARRAYS_KEY]) == ["body.weight"]
    assert trained_names(first.content) == ["body.weight"]
    assert torch.equal(handler.seen[0]["head.weight"], torch.full((4, 3), 7.0))  # global init
    saved = arrays_to_state(context.state[PERSONAL_STATE_KEY])
    assert torch.equal(saved["head.bias"], torch.full((4,), 8.0))

    shared_only = {"body.weight": torch.zeros(3, 2)}  # round 2: the server sends no head
    second = mod(_message(shared_only), context, handler)
    assert torch.equal(handler.seen[1]["head.weight"], torch.full((4, 3), 8.0))  # restored
    assert list(second.content[ARRAYS_KEY]) == ["body.weight"]
    assert torch.equal(
        arrays_to_state(context.state[PERSONAL_STATE_KEY])["head.bias"], torch.full((4,), 9.0)
    )


def test_saved_entries_win_over_a_server_copy() -> None:
    mod, handler, context = personal_layers(), Handler(), _context()
    mod(_message(_global()), context, handler)
    mod(_message(_global()), context, handler)  # the server resent its copy (e.g. after resume)
    assert torch.equal(handler.seen[1]["head.weight"], torch.full((4, 3), 8.0))


def test_a_personal_entry_with_no_source_is_a_clear_error() -> None:
    with pytest.raises(PersonalLayersMissing, match=r"head\.weight"):
        personal_layers()(_message({"body.weight": torch.zeros(3, 2)}), _context(), Handler())


def test_messages_without_personal_names_pass_through_untouched() -> None:
    handler, context = Handler(), _context()
    reply = personal_layers()(_message(_global(), personal=[]), context, handler)
    assert sorted(reply.content[ARRAYS_KEY]) == sorted(_global())
    assert PERSONAL_STATE_KEY not in context.state
