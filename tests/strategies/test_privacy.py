"""The privacy ledger stops before the budget; Poisson sampling is per node, seeded and fair."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedhar.privacy.accounting import ClientLevelDp
from fedhar.wire import METRICS_KEY, numpy_to_arrays
from strategies.privacy import BudgetExhausted, PoissonSampling, PrivacyAccounting, UniformWeights
from tests.helpers.fleet import global_arrays, run_with
from tests.helpers.grids import FakeGrid
from tests.helpers.replies import trained_reply

NODES = list(range(1, 201))


def _fedavg() -> FedAvg:
    return FedAvg(fraction_train=1.0, min_available_nodes=2, min_train_nodes=2)


def test_the_ledger_logs_epsilon_and_refuses_the_round_that_would_pass_the_budget() -> None:
    mechanism = ClientLevelDp(1.0, "poisson", population=200, sample_rate=0.1)
    budget = (mechanism.epsilon(3) + mechanism.epsilon(4)) / 2
    ledger = PrivacyAccounting(_fedavg(), mechanism, epsilon_budget=budget)
    grid, arrays, config = FakeGrid(NODES), global_arrays(), ConfigRecord({})
    for server_round in (1, 2, 3):
        ledger.configure_train(server_round, arrays, config, grid)
        assert ledger.round_stats() == {
            "privacy/delta": 1e-5,
            "privacy/epsilon": mechanism.epsilon(server_round),
        }
    with pytest.raises(BudgetExhausted, match="round 4 would take epsilon"):
        ledger.configure_train(4, arrays, config, grid)


def test_poisson_sampling_is_seeded_per_node_and_keeps_about_the_rate() -> None:
    run = run_with(dict.fromkeys(NODES, 1.0), seed=3)
    sampler = PoissonSampling(_fedavg(), run, sample_rate=0.2)
    grid, arrays, config = FakeGrid(NODES), global_arrays(), ConfigRecord({})
    rounds = [
        {m.metadata.dst_node_id for m in sampler.configure_train(r, arrays, config, grid)}
        for r in range(1, 21)
    ]
    again = {m.metadata.dst_node_id for m in sampler.configure_train(1, arrays, config, grid)}
    assert again == rounds[0]  # reproducible
    sizes = [len(r) for r in rounds]
    assert 30 <= sum(sizes) / len(sizes) <= 50  # 200 * 0.2 = 40 expected
    assert len(set(sizes)) > 3  # Poisson: the cohort size varies
    assert rounds[0] != rounds[1]


@pytest.mark.parametrize(("expected", "mean"), [(2, 1.5), (4, 0.75)])
def test_uniform_weights_average_each_update_once_over_the_expected_cohort(
    reply, expected: int, mean: float
) -> None:
    """Updates 1 and 2 from a zero model: their unweighted mean is 1.5, and 0.75 when four
    clients were expected (the noise is calibrated to that fixed denominator)."""
    grid = FakeGrid([1, 2])
    zero = numpy_to_arrays({n: a.numpy() * 0 for n, a in global_arrays().items()})
    uniform = UniformWeights(_fedavg(), expected)
    messages = list(uniform.configure_train(1, zero, ConfigRecord({}), grid))
    replies = [reply(trained_reply(m, lambda n, t, k=k: t * 0 + k, 10 * k**3), node_id=k)
               for k, m in zip((1, 2), messages, strict=True)]  # fmt: skip
    arrays, _ = uniform.aggregate_train(1, replies)
    assert arrays is not None
    assert float(arrays["head.bias"].numpy()[0]) == pytest.approx(mean)  # not weighted 10 : 80
    assert all(r.content[METRICS_KEY]["num-examples"] != 1 for r in replies)  # inputs untouched
