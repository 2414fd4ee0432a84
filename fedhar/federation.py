"""Who takes part in a federated run, and each participant's data.

The users of a dataset are split user-disjointly into federated clients and held-out users
(server-side evaluation of unseen users). Each client's windows are split chronologically
into a train part and a test part, so federated evaluation asks how well the global model
serves a user's own future data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from fedhar.data import open_users
from fedhar.data.dataset import WindowDataset
from fedhar.data.splits import draw_test_users, split_bout_heads, split_chronological
from fedhar.data.users import UserSource

SPLITS = {"chronological": split_chronological, "bouts": split_bout_heads}


@dataclass(frozen=True)
class FederationSpec:
    """Dataset choice and the two splits that define a federation."""

    dataset: str
    options: tuple[tuple[str, Any], ...] = ()  # loader options as sorted (name, value) pairs
    holdout_fraction: float = 0.2  # share of users kept out of training for server evaluation
    test_fraction: float = 0.25  # share of each client's windows (latest in time) for testing
    gap_s: float = 0.0  # extra margin between a client's train and test windows
    seed: int = 0
    split: str = "chronological"  # or "bouts": FedFitTech's first share of every bout as test

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown federation.split {self.split!r}; valid: {sorted(SPLITS)}")

    @staticmethod
    def options_from(mapping: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        """Loader options as the hashable, order-independent tuple this spec stores."""
        return tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in mapping.items())
        )


@dataclass(frozen=True)
class ClientData:
    user: str
    device: str
    train: WindowDataset
    test: WindowDataset


@dataclass
class Federation:
    """A federation: client users in a fixed order, and the held-out users' windows.

    Users, their devices and the split come from the dataset's user list alone; a client's
    windows are read (or, for synthetic users, generated) only when asked for.
    """

    spec: FederationSpec
    source: UserSource = field(repr=False)

    @cached_property
    def _holdout_users(self) -> frozenset[str]:
        if self.spec.holdout_fraction <= 0:
            return frozenset()
        users = self.source.users
        return frozenset(draw_test_users(users, self.spec.holdout_fraction, self.spec.seed))

    @cached_property
    def clients(self) -> list[str]:
        """Client users, sorted; a node's partition id indexes this list."""
        return sorted(set(self.source.users) - self._holdout_users)

    @cached_property
    def holdout(self) -> WindowDataset:
        """Every window of the held-out users, in dataset order."""
        return self.source.windows_of_users(self._holdout_users)

    @property
    def in_channels(self) -> int:
        return self.source.shape[0]

    @property
    def num_classes(self) -> int:
        return self.source.shape[1]

    @property
    def window_length(self) -> int:
        return self.source.shape[2]

    def device_of(self, user: str) -> str:
        """A user's device label, without reading their windows."""
        return self.source.device_of(user)

    def client(self, partition_id: int) -> ClientData:
        """The user behind a partition id, with their chronological train/test split."""
        users = self.clients
        if not 0 <= partition_id < len(users):
            raise ValueError(
                f"partition id {partition_id} is outside the federation's {len(users)} clients; "
                "run as many simulated nodes as there are client users"
            )
        user = users[partition_id]
        windows = self.source.windows_of(user)
        split = SPLITS[self.spec.split]
        train, test = split(windows, self.spec.test_fraction, self.spec.gap_s)
        if len(train) == 0 or len(test) == 0:
            raise ValueError(
                f"user {user} has {len(train)} training and {len(test)} test windows (of "
                f"{len(windows)}); a client needs both: use a shorter "
                "dataset.options.window_length or stride, or change federation.test_fraction "
                "or federation.gap_s"
            )
        return ClientData(user=user, device=self.device_of(user), train=train, test=test)


@lru_cache(maxsize=4)
def load_federation(spec: FederationSpec) -> Federation:
    """Load (once per process) the dataset behind ``spec``: the server's view of it."""
    return open_federation(spec)


def open_federation(spec: FederationSpec) -> Federation:
    """The dataset behind ``spec``, opened afresh (loaders keep processed windows on disk;
    synthetic users are generated one at a time)."""
    return Federation(spec, open_users(spec.dataset, **dict(spec.options)))


def client_view(spec: FederationSpec) -> Federation:
    """The federation as a simulation worker sees it: kept for the process when its users
    are read one at a time (synthetic), opened afresh when it holds every user's windows, so
    a worker never keeps other users' windows."""
    federation = open_federation(spec)
    return load_federation(spec) if federation.source.lazy else federation


@dataclass(frozen=True)
class FederationIndex:
    """Who the clients are, without anyone's windows: what enrollment needs."""

    clients: tuple[str, ...]  # by partition id
    devices: dict[str, str]  # user -> device label
    shape: tuple[int, int, int]  # (channels, classes, window length)
    windows: dict[str, int]  # user -> windows held, train and test


@lru_cache(maxsize=4)
def federation_index(spec: FederationSpec) -> FederationIndex:
    """The federation's clients, their devices, window counts and the windows' shape (once per
    process)."""
    federation = client_view(spec)
    clients = tuple(federation.clients)
    devices = {user: federation.device_of(user) for user in clients}
    windows = {user: federation.source.window_count(user) for user in clients}
    return FederationIndex(clients, devices, federation.source.shape, windows)


def load_client(spec: FederationSpec, partition_id: int) -> ClientData:
    """One client's data, without keeping the other users' windows in memory.

    Simulation workers serve many nodes; each keeps only the users it is working for.
    """
    return client_view(spec).client(partition_id)
