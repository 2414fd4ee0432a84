"""Epsilon from the run's mechanism equals dp-accounting's for the same events."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from fedhar.privacy.accounting import ClientLevelDp, local_noise_multiplier

Rel = dp_accounting.privacy_accountant.NeighboringRelation


def _independent(event: dp_accounting.DpEvent, rounds: int, delta: float, relation) -> float:
    accountant = RdpAccountant(orders=[1 + x / 20 for x in range(1, 100)] + list(range(6, 256)),
                               neighboring_relation=relation)  # fmt: skip
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("z", "rounds"), [(0.8, 5), (1.2, 50), (3.0, 200)])
def test_poisson_sampling_matches_an_independent_rdp_computation(z: float, rounds: int) -> None:
    ours = ClientLevelDp(z, "poisson", population=400, sample_rate=0.05, delta=1e-6)
    event = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(z))
    assert ours.epsilon(rounds) == pytest.approx(
        _independent(event, rounds, 1e-6, Rel.ADD_OR_REMOVE_ONE), rel=0.01
    )


def test_fixed_size_cohorts_use_replace_one_with_twice_the_sensitivity() -> None:
    ours = ClientLevelDp(2.0, "fixed", population=100, cohort=10, delta=1e-5)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        100, 10, dp_accounting.GaussianDpEvent(1.0)
    )
    assert ours.epsilon(30) == pytest.approx(
        _independent(event, 30, 1e-5, Rel.REPLACE_ONE), rel=0.01
    )


def test_sampling_amplifies_and_epsilon_grows_with_rounds() -> None:
    everyone = ClientLevelDp(1.0, "local", population=100)
    sampled = ClientLevelDp(1.0, "poisson", population=100, sample_rate=0.1)
    assert sampled.epsilon(10) < everyone.epsilon(10)
    series = [sampled.epsilon(r) for r in range(0, 6)]
    assert series[0] == 0 and all(a < b for a, b in itertools.pairwise(series))


def test_local_dp_noise_is_the_classic_gaussian_calibration() -> None:
    assert local_noise_multiplier(1.0, 1e-5) == pytest.approx(math.sqrt(2 * math.log(1.25e5)))
    one_round = ClientLevelDp(local_noise_multiplier(2.0, 1e-5), "local", 10, delta=1e-5)
    assert one_round.epsilon(1) <= 2.0 * 1.2  # RDP's conversion is close to the classic bound


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise > 0"),
        ({"sampling": "shuffled"}, "unknown DP sampling"),
        ({"cohort": 0}, "cohort=0"),
        ({"delta": 1.0}, "delta=1.0"),
    ],
)
def test_bad_mechanisms_are_refused(kwargs: dict, message: str) -> None:
    settings = {"noise_multiplier": 1.0, "sampling": "fixed", "population": 10, "cohort": 5}
    with pytest.raises(ValueError, match=message):
        ClientLevelDp(**{**settings, **kwargs})
