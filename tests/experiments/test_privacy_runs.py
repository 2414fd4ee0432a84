"""Whole runs with differential privacy, in-process: epsilon per round, the budget stop."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from experiments.compose import build_strategy, load_config
from experiments.privacy import PrivacyConfigError, wrap_privacy
from fedhar.checkpoint import load_checkpoint
from strategies.run_info import RunInfo
from strategies.wrapper import wrapper_chain
from tests.helpers.app_runs import run_in_process


def _run(tmp_path: Path, grid_type, overrides: str) -> list[dict]:
    return run_in_process(tmp_path, grid_type, f"num_rounds=8 fleet=none {overrides}")


def _independent_epsilon(rounds: int, z: float, population: int, cohort: int) -> float:
    """Fixed-size cohorts without replacement, replace-one: the clipped sum moves by 2C."""
    accountant = RdpAccountant(
        neighboring_relation=dp_accounting.privacy_accountant.NeighboringRelation.REPLACE_ONE
    )
    gaussian = dp_accounting.GaussianDpEvent(z / 2)
    event = dp_accounting.SampledWithoutReplacementDpEvent(population, cohort, gaussian)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(1e-5)


def test_epsilon_is_logged_every_round_and_the_run_stops_before_the_budget(
    tmp_path: Path, in_process_grid
) -> None:
    budget = (_independent_epsilon(3, 2.0, 4, 4) + _independent_epsilon(4, 2.0, 4, 4)) / 2
    overrides = f"privacy=client privacy.noise_multiplier=2.0 privacy.epsilon_budget={budget}"
    rows = _run(tmp_path, in_process_grid, overrides)
    assert [r["server_round"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["sampled"] == 4 and row["num_failures"] == 0
        expected = _independent_epsilon(row["server_round"], 2.0, 4, 4)
        assert row["extra"]["privacy/epsilon"] == pytest.approx(expected, rel=0.01)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.server_round == 3
    assert (tmp_path / "summary.json").exists()
    again = _run(tmp_path, in_process_grid, overrides)  # resumed: no round fits the budget
    assert [r["server_round"] for r in again] == [1, 2, 3]


def test_local_dp_noises_updates_and_runs_through(tmp_path: Path, in_process_grid) -> None:
    quiet = _run(tmp_path / "quiet", in_process_grid, "num_rounds=2")
    noisy = _run(
        tmp_path / "noisy", in_process_grid, "num_rounds=2 privacy=local privacy.local_epsilon=0.5"
    )
    assert all(r["num_failures"] == 0 and r["evaluate_failures"] == [] for r in noisy)
    assert noisy[-1]["extra"]["privacy/epsilon"] > quiet[-1]["extra"].get("privacy/epsilon", 0)
    start = load_checkpoint(tmp_path / "quiet")
    end = load_checkpoint(tmp_path / "noisy")
    assert start is not None and end is not None
    moved = np.abs(end.arrays["head.weight"] - start.arrays["head.weight"]).mean()
    assert moved > 1.0  # noise of std 1.0 * sqrt(2 ln(1.25e5)) / 0.5 = 9.7 on every weight


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy=central", "wrappers=[secagg]"], "use privacy=client"),
        (["privacy=client", "wrappers=[secagg]"], "max_weight=1"),
        (["privacy=client", "fleet=none", "privacy.sampling=poisson",
          "strategy.algorithm.fraction_train=0.5"], "fraction_train=1.0"),
        (["privacy=client", "privacy.mechanism=laplace"], "unknown privacy.mechanism"),
        (["privacy=client", "fleet=mixed"], "privacy needs fleet=none"),
        (["privacy=client", "fleet=none", "strategy=fedadam"], "use strategy=fedavg"),
        (["privacy=central", "fleet=none", "strategy=krum"], "robust aggregate"),
        (["privacy=client", "fleet=none", "strategy=fedmedian"], "robust aggregate"),
        (["privacy=client_adaptive", "fleet=none", "privacy.sampling=poisson"],
         "adaptive clipping with privacy.sampling=poisson"),
    ],
)  # fmt: skip
def test_privacy_settings_that_cannot_work_are_refused(overrides: list[str], message: str) -> None:
    cfg = load_config(overrides)
    algorithm = build_strategy(cfg, 10, RunInfo("r", 0, Path(".")))
    with pytest.raises(PrivacyConfigError, match=message):
        wrap_privacy(cfg, algorithm, RunInfo("r", 0, Path(".")), 10)


def test_partial_models_take_central_dp_only() -> None:
    from strategies.heterofl import HeteroFL
    from strategies.privacy import PartialModelDp

    cfg = load_config(["privacy=client", "strategy=heterofl", "fleet=none"])
    with pytest.raises(PrivacyConfigError, match="use privacy=central"):
        wrap_privacy(cfg, HeteroFL(), RunInfo("r", 0, Path(".")), 10)
    cfg = load_config(["privacy=central", "strategy=heterofl", "fleet=none"])
    stack = wrap_privacy(cfg, HeteroFL(), RunInfo("r", 0, Path(".")), 10)
    assert any(isinstance(layer, PartialModelDp) for layer in wrapper_chain(stack))


def test_a_partial_model_run_with_dp_noises_and_logs_epsilon(
    tmp_path: Path, in_process_grid
) -> None:
    rows = _run(tmp_path, in_process_grid, "num_rounds=2 strategy=fjord privacy=central "
                "privacy.noise_multiplier=0.5 privacy.clipping_norm=0.5")  # fmt: skip
    assert all(r["num_failures"] == 0 for r in rows)
    assert rows[-1]["extra"]["privacy/updates"] == 4 and rows[-1]["extra"]["privacy/epsilon"] > 0


def test_dp_sgd_devices_report_epsilon_and_the_run_stops_at_their_budget(
    tmp_path: Path, in_process_grid
) -> None:
    overrides = "model=deepconvlstm model.width=0.25 privacy=dp_sgd num_rounds=4"
    unlimited = _run(tmp_path / "unlimited", in_process_grid, overrides)
    assert [r["server_round"] for r in unlimited] == [1, 2, 3, 4]
    epsilons = [r["extra"]["privacy/sample_epsilon_max"] for r in unlimited]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] < epsilons[3]
    budget = (epsilons[1] + epsilons[2]) / 2
    capped = _run(
        tmp_path / "capped", in_process_grid, f"{overrides} privacy.epsilon_budget={budget}"
    )
    assert [r["server_round"] for r in capped] == [1, 2]
    assert all(r["num_failures"] == 0 and r["declines"] == [] for r in capped)
    assert capped[-1]["extra"]["privacy/sample_epsilon_max"] == pytest.approx(epsilons[1])


def test_dp_sgd_refuses_batchnorm_models_and_fleets() -> None:
    from experiments.compose import client_settings, federation_spec
    from fedhar.federation import open_federation

    for overrides, message in (
        (["privacy=dp_sgd", "fleet=none", "model=dscnn"], "model=deepconvlstm"),
        (["privacy=dp_sgd", "fleet=mixed", "model=deepconvlstm"], "use fleet=none"),
    ):
        cfg = load_config([*overrides, "dataset.options.num_users=3"])
        with pytest.raises(PrivacyConfigError, match=message):
            client_settings(cfg, open_federation(federation_spec(cfg)))


def test_local_dp_takes_a_robust_aggregator() -> None:
    """Local DP noises each update on its device: what the server then does is post-processing."""
    cfg = load_config(["privacy=local", "fleet=none", "strategy=krum"])
    algorithm = build_strategy(cfg, 10, RunInfo("r", 0, Path(".")))
    assert wrap_privacy(cfg, algorithm, RunInfo("r", 0, Path(".")), 10) is not None
