"""Epsilon of a federated run's client-level DP, from dp-accounting's RDP accountant.

A round releases the Gaussian mechanism on the sum of the sampled clients' clipped updates,
with noise of standard deviation ``noise_multiplier * clipping_norm`` on that sum (Flower's
DP wrappers add ``noise_multiplier * clipping_norm / cohort`` to the average). The run's
real sampling sets the amplification and the neighbouring relation:

- ``poisson``: each client takes part with probability ``sample_rate``, independently
  (`strategies.privacy.PoissonSampling`); add-or-remove-one client, sensitivity C;
- ``fixed``: a uniformly random cohort of fixed size without replacement (Flower's
  sampling); replace-one client, so the sum's sensitivity is 2C and the accountant's noise
  multiplier is half the configured one;
- ``local``: every client noises its own update (Flower's ``LocalDpMod``) and the server sees
  who took part: no amplification; the per-round Gaussian has noise multiplier
  ``sqrt(2 ln(1.25 / delta_local)) / epsilon_local`` relative to the mod's sensitivity, and a
  client is counted in every round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting
from dp_accounting.rdp import RdpAccountant

SAMPLINGS = ("poisson", "fixed", "local")
NeighborRel = dp_accounting.privacy_accountant.NeighboringRelation


@dataclass(frozen=True)
class ClientLevelDp:
    """One run's DP mechanism, as the accountant needs it.

    Attributes
    ----------
    noise_multiplier : noise std on the sum over the clipping norm (``fixed``, ``poisson``), or
        over the local mod's sensitivity (``local``).
    sampling : "poisson", "fixed" or "local".
    population : clients that may be sampled.
    cohort : clients sampled per round (``fixed``); ignored otherwise.
    sample_rate : each client's chance to take part in a round (``poisson``).
    delta : the delta epsilon is reported at.
    """

    noise_multiplier: float
    sampling: str
    population: int
    cohort: int = 0
    sample_rate: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown DP sampling {self.sampling!r}; valid: {list(SAMPLINGS)}")
        if not self.noise_multiplier > 0:
            raise ValueError(
                f"noise_multiplier={self.noise_multiplier}: accounting needs noise > 0"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta} must lie in (0, 1)")
        if self.population < 1:
            raise ValueError(f"population={self.population} must be at least 1")
        if self.sampling == "fixed" and not 1 <= self.cohort <= self.population:
            raise ValueError(f"cohort={self.cohort} must lie in [1, population={self.population}]")
        if self.sampling == "poisson" and not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate={self.sample_rate} must lie in (0, 1]")

    def event(self) -> dp_accounting.DpEvent:
        """One round's DP event."""
        if self.sampling == "poisson":
            gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
            return dp_accounting.PoissonSampledDpEvent(self.sample_rate, gaussian)
        if self.sampling == "fixed":
            gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier / 2)  # sensitivity 2C
            return dp_accounting.SampledWithoutReplacementDpEvent(
                self.population, self.cohort, gaussian
            )
        return dp_accounting.GaussianDpEvent(self.noise_multiplier)

    def accountant(self) -> RdpAccountant:
        relation = (
            NeighborRel.REPLACE_ONE if self.sampling == "fixed" else NeighborRel.ADD_OR_REMOVE_ONE
        )
        return RdpAccountant(neighboring_relation=relation)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds (0 before any)."""
        if rounds <= 0:
            return 0.0
        accountant = self.accountant()
        accountant.compose(self.event(), rounds)
        return _epsilon(accountant, self.delta)


def _epsilon(accountant: RdpAccountant, delta: float) -> float:
    absl = logging.getLogger("absl")  # orders whose series do not converge are skipped
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return float(accountant.get_epsilon(delta))
    finally:
        absl.setLevel(level)


def local_noise_multiplier(epsilon: float, delta: float) -> float:
    """The Gaussian noise multiplier Flower's ``LocalDpMod`` uses for (epsilon, delta)."""
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError(f"local DP needs epsilon > 0 and delta in (0, 1); got {epsilon}, {delta}")
    return math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def sample_level_epsilon(
    noise_multiplier: float, history: Sequence[tuple[float, int]], delta: float
) -> float:
    """Epsilon at ``delta`` of DP-SGD on one user's windows, add-or-remove-one window.

    ``history`` lists each local update the user ran: (Poisson sample rate, noisy steps).
    """
    if not history:
        return 0.0
    accountant = RdpAccountant(neighboring_relation=NeighborRel.ADD_OR_REMOVE_ONE)
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    for sample_rate, steps in history:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian), steps)
    return _epsilon(accountant, delta)
