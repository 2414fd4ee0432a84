"""Federation: held-out users, client order, per-client chronological splits."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.federation import FederationSpec, load_client, load_federation

SPEC = FederationSpec(
    "synthetic",
    FederationSpec.options_from({"num_users": 6, "seconds_per_user": 60.0, "seed": 2}),
    holdout_fraction=0.34,
    test_fraction=0.25,
)


def test_held_out_users_never_train_and_clients_are_sorted() -> None:
    federation = load_federation(SPEC)
    assert federation.clients == sorted(federation.clients)
    assert len(federation.clients) == 4 and len(federation.holdout.users) == 2
    assert not set(federation.clients) & set(federation.holdout.users)


def test_client_split_is_chronological_without_overlap() -> None:
    data = load_federation(SPEC).client(1)
    assert set(data.train.user) == set(data.test.user) == {data.user}
    window_s = data.train.x.shape[-1] / data.train.sampling_rate_hz
    assert data.train.start_time_s.max() + window_s <= data.test.start_time_s.min()


def test_worker_side_loading_gives_the_same_client() -> None:
    a, b = load_federation(SPEC).client(2), load_client(SPEC, 2)
    assert a.user == b.user and np.array_equal(a.train.x, b.train.x)


def test_partition_outside_the_federation_names_the_fix() -> None:
    with pytest.raises(ValueError, match="as many simulated nodes as there are client users"):
        load_federation(SPEC).client(4)
