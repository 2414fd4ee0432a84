"""The privacy ledger stops before the budget; Poisson sampling is per node, seeded and fair."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedhar.privacy.accounting import ClientLevelDp
from fedhar.wire import METRICS_KEY, arrays_to_state, numpy_to_arrays
from strategies.heterofl import HeteroFL
from strategies.privacy import (
    BudgetExhausted,
    PartialModelDp,
    PoissonSampling,
    PrivacyAccounting,
    UniformWeights,
)
from tests.helpers.fleet import global_arrays, run_with
from tests.helpers.grids import FakeGrid
from tests.helpers.replies import make_reply, trained_reply

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


def _partial_round(noise: float, clip: float, updates: dict[int, float]):
    """One HeteroFL round under PartialModelDp: node k adds ``updates[k]`` to everything."""

    run = run_with({1: 1.0, 2: 0.5, 3: 0.25}, seed=4)
    inner = HeteroFL(model="microbi_convlstm", run=run, min_train_nodes=3, min_available_nodes=3)
    strategy = PartialModelDp(inner, run, noise_multiplier=noise, clipping_norm=clip)
    zero = numpy_to_arrays({n: a.numpy() * 0 for n, a in global_arrays().items()})
    grid = FakeGrid([1, 2, 3])
    sent = strategy.configure_train(1, zero, ConfigRecord({}), grid)
    messages = {m.metadata.dst_node_id: m for m in sent}
    replies = [make_reply(trained_reply(messages[k], lambda n, t, v=v: t + v, 10 * k), node_id=k)
               for k, v in updates.items()]  # fmt: skip
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays_to_state(arrays), strategy


def test_partial_model_dp_without_noise_is_the_unweighted_mean_over_the_nodes_sent() -> None:
    state, _ = _partial_round(0.0, 1e6, {1: 1.0, 2: 2.0, 3: 4.0})
    conv = state["conv1.weight"]  # rows 0-3 sent to all three nodes, 4-7 to two, 8-15 to one
    assert torch.allclose(conv[:4], torch.full_like(conv[:4], 7 / 3))
    assert torch.allclose(conv[4:8], torch.full_like(conv[4:8], 1.5))
    assert torch.allclose(conv[8:], torch.full_like(conv[8:], 1.0))


def test_partial_model_dp_clips_each_update_and_noises_each_element_by_its_senders() -> None:
    state, strategy = _partial_round(0.0, 0.01, {1: 1.0, 2: 2.0, 3: 4.0})
    assert strategy.round_stats()["privacy/clipped"] == 3
    assert state["conv1.weight"].abs().max() < 0.01  # every clipped update has norm 0.01
    noisy, _ = _partial_round(2.0, 0.01, {1: 0.0, 2: 0.0, 3: 0.0})
    conv = noisy["conv1.weight"]
    # noise std 2.0 * 0.01 on the sum, divided by the nodes each row was sent to
    assert float(conv[:4].std()) == pytest.approx(0.02 / 3, rel=0.25)
    assert float(conv[8:].std()) == pytest.approx(0.02, rel=0.25)


def test_noised_batchnorm_variances_are_clamped_above_zero(reply) -> None:
    class Negative(FedAvg):
        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            state = {n: a.numpy() for n, a in arrays.items()}
            state["bn1.running_var"] = state["bn1.running_var"] * 0 - 0.5  # as noise might
            return numpy_to_arrays(state), metrics

    from strategies.privacy import ValidStatistics

    inner = Negative(fraction_train=1.0, min_available_nodes=2, min_train_nodes=2)
    valid = ValidStatistics(inner)
    messages = list(valid.configure_train(1, global_arrays(), ConfigRecord({}), FakeGrid([1, 2])))
    replies = [reply(trained_reply(m, lambda n, t: t, 10), node_id=k)
               for k, m in zip((1, 2), messages, strict=True)]  # fmt: skip
    arrays, _ = valid.aggregate_train(1, replies)
    assert arrays is not None
    assert float(arrays["bn1.running_var"].numpy().min()) == pytest.approx(1e-5)
    assert valid.round_stats()["privacy/clamped-variances"] == 16
