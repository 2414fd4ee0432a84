"""Keeps each node's ``context.state`` on disk after every round it trains in.

Client state that must survive rounds (error-feedback residuals, personal layers) lives in
``context.state``, which a killed run loses. With this mod outermost, a node that starts
with an empty state in round r (a resumed run) reloads what it saved in its latest round
before r when asked to train, and up to r when asked to evaluate (a node evaluated before
it trains again scores its own personal layers), so a resumed run ends with the same numbers
as an uninterrupted one. Secure aggregation's per-round secrets (``secagg-round``) are never
written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import Mod

from fedhar.wire import (
    CONFIG_KEY,
    SECAGG_STATE_KEY,
    message_kind,
    record_from_bytes,
    record_to_bytes,
)

STATE_DIR = "client_state"
VOLATILE_KEYS = (SECAGG_STATE_KEY,)  # a round's secrets: never written, a resumed round restarts


def _round_of(path: Path) -> int:
    return int(path.stem.removeprefix("round"))


def latest_before(folder: Path, server_round: int) -> Path | None:
    """The node's state file of the latest round before ``server_round``, if any."""
    saved = [p for p in folder.glob("round*.bin") if _round_of(p) < server_round]
    return max(saved, key=_round_of, default=None)


def persisted_state_mod(run_dir: str) -> Mod:
    """A mod that saves and (on a fresh node) restores ``context.state`` under ``run_dir``."""
    root = Path(run_dir) / STATE_DIR

    def mod(
        msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        kind = message_kind(msg)
        config = msg.content.config_records.get(CONFIG_KEY)
        if kind not in (MessageType.TRAIN, MessageType.EVALUATE) or config is None:
            return call_next(msg, context)
        server_round = int(str(config["server-round"]))
        folder = root / f"node{int(context.node_config['partition-id'])}"
        kept = RecordDict({k: v for k, v in context.state.items() if k not in VOLATILE_KEYS})
        # training in round r starts from the state before r; evaluating scores r's own
        since = server_round if kind == MessageType.TRAIN else server_round + 1
        if not kept and (previous := latest_before(folder, since)) is not None:
            for key, record in record_from_bytes(previous.read_bytes()).items():
                context.state[key] = record
        reply = call_next(msg, context)
        if kind != MessageType.TRAIN:
            return reply
        kept = RecordDict({k: v for k, v in context.state.items() if k not in VOLATILE_KEYS})
        if len(kept):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"round{server_round:05d}.bin"
            path.with_suffix(".tmp").write_bytes(record_to_bytes(kept))
            os.replace(path.with_suffix(".tmp"), path)
        return reply

    return mod
