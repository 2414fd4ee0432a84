"""A Grid that hands every call to the grid it wraps: the base of grids that change one;
and the grid that screens replies as they arrive."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run

from strategies.wrapper import wrapper_chain


class GridProxy(Grid):
    """Delegates every `Grid` method to ``grid``; subclasses override what they change."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    @property
    def run(self) -> Run:
        return self.grid.run

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class ScreenedGrid(GridProxy):
    """``grid`` with every reply passed through ``screen`` as it arrives, before any strategy
    or wrapper reads it (the encryption wrapper's signature check)."""

    def __init__(self, grid: Grid, screen: Callable[[Message], Message]) -> None:
        super().__init__(grid)
        self.screen = screen

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.screen(m) for m in self.grid.pull_messages(message_ids)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self.screen(m) for m in self.grid.send_and_receive(messages, timeout=timeout)]


def screening(grid: Grid, strategy: Strategy) -> Grid:
    """``grid`` screened by every layer of ``strategy``'s stack that has a ``screen_reply``."""
    for layer in wrapper_chain(strategy):
        screen = getattr(layer, "screen_reply", None)
        if screen is not None:
            grid = ScreenedGrid(grid, screen)
    return grid
