"""Robust aggregation: Flower's own FedMedian, FedTrimmedAvg and Krum, as configured, behind
update sanitation, keep a poisoned update (finite, the right layout, an honest example count:
nothing the default sanitation rejects) from taking over the average that FedAvg hands it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from hydra.utils import instantiate
from omegaconf import OmegaConf

from clients.app import poisoned
from experiments.compose import CONFIG_DIR
from strategies.run_info import FleetDirectory
from strategies.sanitize import SanitizedUpdates
from tests.helpers.grids import FakeGrid
from tests.helpers.replies import make_reply, trained_reply

NODES = [1, 2, 3, 4, 5, 6]
ATTACKER = 6


def _preset(name: str) -> SanitizedUpdates:
    spec = OmegaConf.load(CONFIG_DIR / "strategy" / f"{name}.yaml")
    return SanitizedUpdates(instantiate(spec.algorithm), FleetDirectory())


def _aggregated(name: str, scale: float) -> np.ndarray:
    strategy = _preset(name)
    arrays = ArrayRecord({"w": torch.zeros(4), "steps": torch.zeros(1, dtype=torch.int64)})
    config = ConfigRecord({"epochs": 1, "batch-size": 8, "lr": 0.1})
    messages = sorted(
        strategy.configure_train(1, arrays, config, FakeGrid(NODES)),
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = []
    for message in messages:
        node = message.metadata.dst_node_id
        honest = trained_reply(message, lambda n, t, k=node: t + 1 + 0.01 * k, 10)
        content = poisoned(honest, message, scale) if node == ATTACKER else honest
        replies.append(make_reply(content, node_id=node))
    result, _ = strategy.aggregate_train(1, replies)
    assert result is not None and strategy.round_rejections() == []  # nothing to sanitize
    return result["w"].numpy()


def test_the_attacker_sends_a_flipped_boosted_update() -> None:
    message = next(iter(_preset("fedavg").configure_train(
        1, ArrayRecord({"w": torch.full((2,), 3.0), "n": torch.ones(1, dtype=torch.int64)}),
        ConfigRecord(), FakeGrid([1, 2]),
    )))  # fmt: skip
    sent = poisoned(trained_reply(message, lambda n, t: t + 2, 10), message, -4.0)["arrays"]
    np.testing.assert_array_equal(sent["w"].numpy(), [-5.0, -5.0])  # 3 - 4 * 2
    np.testing.assert_array_equal(sent["n"].numpy(), [3])  # whole numbers are not scaled


def test_fedavg_follows_the_poisoned_update() -> None:
    w = _aggregated("fedavg", scale=-40.0)
    assert (w < 0).all()  # (5 honest ~ +1, one -40) / 6


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg", "krum"])
def test_robust_aggregators_stay_with_the_honest_majority(name: str) -> None:
    w = _aggregated(name, scale=-40.0)
    assert ((w > 1.0) & (w < 1.07)).all(), w  # within the honest updates' range
    clean = _aggregated(name, scale=1.0)
    assert np.abs(w - clean).max() < 0.05
