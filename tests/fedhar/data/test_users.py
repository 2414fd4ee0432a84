"""Datasets user by user: the same windows as the whole dataset, without loading it."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.data import load_dataset, open_users
from fedhar.data.users import LoadedUsers, SyntheticUsers
from fedhar.federation import FederationSpec, open_federation

OPTIONS = {"num_users": 5, "seconds_per_user": 60.0, "seed": 4}


def _same(a, b) -> bool:  # type: ignore[no-untyped-def]
    return all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ("x", "y", "user", "start_time_s")
    )


@pytest.mark.parametrize("label_noise", [0.0, 0.3])
def test_synthetic_users_match_the_whole_dataset_user_by_user(label_noise: float) -> None:
    options = {**OPTIONS, "label_noise": label_noise}
    whole = load_dataset("synthetic", **options)
    users = open_users("synthetic", **options)
    assert isinstance(users, SyntheticUsers)
    assert list(users.users) == whole.users == ["u00", "u01", "u02", "u03", "u04"]
    for user in users.users:
        assert _same(users.windows_of(user), whole.for_user(user))
    both = whole.select(np.isin(whole.user, ["u01", "u03"]))
    assert _same(users.windows_of_users({"u03", "u01"}), both)
    assert users.shape == (whole.x.shape[1], whole.num_classes, whole.x.shape[2])


def test_a_synthetic_federation_of_many_users_reads_only_what_it_is_asked_for() -> None:
    spec = FederationSpec("synthetic", FederationSpec.options_from({**OPTIONS, "num_users": 20000}))
    federation = open_federation(spec)  # 20,000 users: nothing is generated yet
    assert len(federation.clients) == 16000 and federation.device_of("u00") == "synthetic"
    client = federation.client(3)
    assert client.user == federation.clients[3] and len(client.train) > len(client.test) > 0


def test_unknown_synthetic_user_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="no synthetic user 'u99'"):
        open_users("synthetic", **OPTIONS).windows_of("u99")


def test_loaded_users_keep_dataset_order_and_devices() -> None:
    whole = load_dataset("synthetic", **OPTIONS)
    users = LoadedUsers(whole)
    assert users.users == tuple(whole.users)
    assert users.device_of("u02") == "synthetic"
    assert _same(users.windows_of("u02"), whole.for_user("u02"))


@pytest.mark.parametrize(
    "options",
    [
        OPTIONS,
        {**OPTIONS, "seconds_per_user": 17.3, "rate_hz": 33.0, "stride": 50},
        {**OPTIONS, "seconds_per_user": 2.56, "window_length": 128},  # exactly one window
    ],
)
def test_window_counts_match_the_windows_without_reading_them(options) -> None:
    whole = load_dataset("synthetic", **options)
    lazy, loaded = open_users("synthetic", **options), LoadedUsers(whole)
    for user in lazy.users:
        assert lazy.window_count(user) == loaded.window_count(user) == len(whole.for_user(user))
