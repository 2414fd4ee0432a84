"""The ``privacy`` config: Flower's DP wrappers and mods around the algorithm, and the ledger.

``privacy.mechanism`` picks one of Flower 1.41's Message-API mechanisms:

- ``central``: ``DifferentialPrivacyServerSideFixedClipping``;
- ``central_adaptive``: ``DifferentialPrivacyServerSideAdaptiveClipping``;
- ``client``: ``DifferentialPrivacyClientSideFixedClipping`` and ``fixedclipping_mod``;
- ``client_adaptive``: ``DifferentialPrivacyClientSideAdaptiveClipping`` and
  ``adaptiveclipping_mod``;
- ``local``: ``LocalDpMod`` on the devices;
- ``dp_sgd``: sample-level DP-SGD inside every local update (`fedhar.privacy.dpsgd`, Opacus),
  each device accounting for its own windows; `strategies.privacy.SampleLevelAccounting`
  logs the largest epsilon and stops the run once no device has budget left.

Around the algorithm, inner to outer: `strategies.privacy.UniformWeights` (DP's noise is
calibrated to the unweighted mean), the Flower wrapper, `ValidStatistics` (BatchNorm
variances clamped above zero after the noise), `PoissonSampling` when
``privacy.sampling=poisson``, and `PrivacyAccounting`, which logs epsilon every round and stops
the run before ``privacy.epsilon_budget``. Client-side clipping composes with secure
aggregation: the server sees only the sum of clipped updates and adds the noise itself, so the
noise protects the released models, not the sum from the server. Server-side clipping needs
single updates and is refused with ``secagg``; so are server optimizers (FedAdam, FedYogi)
and the fleet simulation (its drop-outs are not uniform sampling). Partial-model strategies
take ``privacy=central`` only, through `strategies.privacy.PartialModelDp`, which clips and
noises per element by the clients each element was sent to.
"""

from __future__ import annotations

from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import Mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from omegaconf import DictConfig

from clients.privacy import train_only
from fedhar.models import ModelShape
from fedhar.privacy.accounting import ClientLevelDp, local_noise_multiplier
from fedhar.privacy.dpsgd import DpSgd, DpSgdUnsupported, check_supported
from strategies.privacy import (
    PartialModelDp,
    PoissonSampling,
    PrivacyAccounting,
    SampleLevelAccounting,
    UniformWeights,
    ValidStatistics,
)
from strategies.run_info import RunInfo
from strategies.secagg import ROBUST_AGGREGATORS
from strategies.wrapper import innermost

MECHANISMS = ("none", "central", "central_adaptive", "client", "client_adaptive", "local", "dp_sgd")
_FIXED = {
    "central": DifferentialPrivacyServerSideFixedClipping,
    "client": DifferentialPrivacyClientSideFixedClipping,
}
_ADAPTIVE = {
    "central_adaptive": DifferentialPrivacyServerSideAdaptiveClipping,
    "client_adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}


class PrivacyConfigError(ValueError):
    """A privacy setting that cannot work; the message says which and how to fix it."""


def mechanism_of(cfg: DictConfig) -> str:
    privacy = cfg.get("privacy") or {}
    mechanism = str(privacy.get("mechanism", "none"))
    if mechanism not in MECHANISMS:
        raise PrivacyConfigError(
            f"unknown privacy.mechanism {mechanism!r}; valid: {list(MECHANISMS)} "
            "(pick one with privacy=<name>)"
        )
    return mechanism


def cohort_size(strategy: Strategy, num_clients: int) -> int:
    """Clients a Flower FedAvg-style strategy samples per round (its own formula)."""
    core = innermost(strategy)
    fraction = float(getattr(core, "fraction_train", 1.0))
    return max(int(num_clients * fraction), int(getattr(core, "min_train_nodes", 1)))


def _check(cfg: DictConfig, mechanism: str, strategy: Strategy) -> None:
    wrappers = dict(cfg.get("wrappers") or {})
    if mechanism.startswith("central") and "secagg" in wrappers:
        raise PrivacyConfigError(
            f"privacy={mechanism} clips each update on the server, which secure aggregation "
            "hides; use privacy=client (clipping on the devices, noise on the sum) with secagg"
        )
    if "secagg" in wrappers and int(wrappers["secagg"].server.get("max_weight", 0)) != 1:
        raise PrivacyConfigError(
            "DP noise is calibrated to the unweighted mean but secure aggregation weights "
            "updates by example count; add wrappers.secagg.server.max_weight=1"
        )
    fraction = float(getattr(innermost(strategy), "fraction_train", 1.0))
    if cfg.privacy.sampling == "poisson" and fraction != 1:
        raise PrivacyConfigError(
            "privacy.sampling=poisson samples every node with privacy.sample_rate itself; set "
            "strategy.algorithm.fraction_train=1.0"
        )
    core = innermost(strategy)
    robust = isinstance(core, ROBUST_AGGREGATORS) and mechanism != "local"  # local: on devices
    if type(core).__name__ in ("FedAdam", "FedYogi", "FedAdagrad", "FedAvgM") or robust:
        raise PrivacyConfigError(
            f"privacy={mechanism} with strategy={cfg.strategy.name}: Flower's DP wrappers noise "
            "the strategy's output, and a server optimizer's step or a robust aggregate (a "
            "median, one chosen update) is not the mean the noise is calibrated to; use "
            "strategy=fedavg or fedprox"
        )
    fleet = cfg.get("fleet") or {}
    if fleet.get("mix") or fleet.get("device_map"):
        raise PrivacyConfigError(
            "privacy needs fleet=none: the fleet's availability and deadlines drop clients in a "
            "way the accountant's uniform sampling does not model"
        )
    if mechanism.endswith("adaptive") and cfg.privacy.sampling == "poisson":
        raise PrivacyConfigError(
            "adaptive clipping with privacy.sampling=poisson: Flower's clipped-count noise is "
            "accounted for fixed-size cohorts only; use privacy.sampling=fixed"
        )
    if hasattr(core, "coordinate_slices") and mechanism != "central":
        raise PrivacyConfigError(
            f"privacy={mechanism} with strategy={cfg.strategy.name}: Flower's DP wrappers noise "
            "every element as if all sampled clients trained it, which under-noises elements "
            "of partial models; use privacy=central (strategies.privacy.PartialModelDp: "
            "clipping and noise per element)"
        )
    if cfg.privacy.sampling not in ("fixed", "poisson"):
        raise PrivacyConfigError(
            f"privacy.sampling={cfg.privacy.sampling!r}; valid: fixed, poisson"
        )


def ledger(cfg: DictConfig, mechanism: str, strategy: Strategy, num_clients: int) -> ClientLevelDp:
    """What the accountant needs to know about this run's mechanism."""
    p = cfg.privacy
    if mechanism == "local":  # LocalDpMod's std over a clipped update's replace-one change 2C
        std = float(p.local_sensitivity) * local_noise_multiplier(
            float(p.local_epsilon), float(p.local_delta)
        )
        z = std / (2 * float(p.clipping_norm))
        return ClientLevelDp(z, "local", num_clients, delta=float(p.delta))
    if p.sampling == "poisson":
        return ClientLevelDp(
            float(p.noise_multiplier),
            "poisson",
            num_clients,
            sample_rate=float(p.sample_rate),
            delta=float(p.delta),
        )
    return ClientLevelDp(
        float(p.noise_multiplier),
        "fixed",
        num_clients,
        cohort=cohort_size(strategy, num_clients),
        delta=float(p.delta),
    )


def dp_sgd_settings(cfg: DictConfig, shape: ModelShape) -> DpSgd | None:
    """The devices' DP-SGD settings under ``privacy=dp_sgd``; None otherwise.

    Raises
    ------
    PrivacyConfigError
        When the model has BatchNorm, or the run simulates a fleet (DP-SGD trains the whole
        model in fp32, not a device's SRAM plan).
    """
    if mechanism_of(cfg) != "dp_sgd":
        return None
    fleet = cfg.get("fleet") or {}
    if fleet.get("mix") or fleet.get("device_map"):
        raise PrivacyConfigError(
            "privacy=dp_sgd trains the whole model in fp32, not a device's SRAM plan or QAT; "
            "use fleet=none"
        )
    try:
        check_supported(shape.build(1.0))
    except DpSgdUnsupported as unsupported:
        raise PrivacyConfigError(str(unsupported)) from None
    p = cfg.privacy
    budget = p.get("epsilon_budget")
    return DpSgd(
        float(p.noise_multiplier),
        float(p.max_grad_norm),
        float(p.delta),
        None if budget is None else float(budget),
    )


def wrap_privacy(cfg: DictConfig, strategy: Strategy, run: RunInfo, num_clients: int) -> Strategy:
    """The algorithm inside the configured DP mechanism and the privacy ledger."""
    mechanism = mechanism_of(cfg)
    if mechanism == "none":
        return strategy
    if mechanism == "dp_sgd":
        budget = cfg.privacy.get("epsilon_budget")
        delta = float(cfg.privacy.delta)
        return SampleLevelAccounting(strategy, delta, None if budget is None else float(budget))
    _check(cfg, mechanism, strategy)
    p = cfg.privacy
    mechanism_ledger = ledger(cfg, mechanism, strategy, num_clients)
    if p.sampling == "poisson":
        expected = max(1, round(float(p.sample_rate) * num_clients))
    else:
        expected = cohort_size(strategy, num_clients)
    wrapped: Strategy = UniformWeights(strategy, expected)
    if hasattr(innermost(strategy), "coordinate_slices"):  # central, checked above
        wrapped = PartialModelDp(strategy, run, float(p.noise_multiplier), float(p.clipping_norm))
    elif mechanism in _FIXED:
        wrapped = _FIXED[mechanism](
            wrapped, float(p.noise_multiplier), float(p.clipping_norm), expected
        )
    elif mechanism in _ADAPTIVE:
        wrapped = _ADAPTIVE[mechanism](
            wrapped,
            float(p.noise_multiplier),
            expected,
            initial_clipping_norm=float(p.clipping_norm),
            target_clipped_quantile=float(p.target_clipped_quantile),
            clip_norm_lr=float(p.clip_norm_lr),
            clipped_count_stddev=p.get("clipped_count_stddev"),
        )
    wrapped = ValidStatistics(wrapped)
    if p.sampling == "poisson":
        wrapped = PoissonSampling(wrapped, run, float(p.sample_rate))
    budget = p.get("epsilon_budget")
    return PrivacyAccounting(wrapped, mechanism_ledger, None if budget is None else float(budget))


def privacy_mods(cfg: DictConfig) -> list[Mod]:
    """The client mod of the configured mechanism (none for server-side clipping), on train
    messages only (`clients.privacy.train_only`)."""
    mechanism = mechanism_of(cfg)
    p = cfg.privacy
    mods: dict[str, Mod] = {"client": fixedclipping_mod, "client_adaptive": adaptiveclipping_mod}
    if mechanism == "local":
        local = LocalDpMod(
            float(p.clipping_norm),
            float(p.local_sensitivity),
            float(p.local_epsilon),
            float(p.local_delta),
        )
        return [train_only(local)]
    return [train_only(mods[mechanism])] if mechanism in mods else []
