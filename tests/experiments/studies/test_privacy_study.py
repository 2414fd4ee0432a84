"""The privacy study's server views and table, without running federations."""

from __future__ import annotations

import torch

from experiments.studies.privacy import CLIP, DEFENSES, Outcome, _seen, table
from fedhar.privacy.defenses import summed
from fedhar.privacy.observe import update_norm


def _updates() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{"w": 2 * torch.randn(8, 4, generator=gen), "head.bias": torch.randn(7, generator=gen)}
            for _ in range(3)]  # fmt: skip


def test_each_defense_shows_the_server_what_it_should() -> None:
    updates = _updates()
    views = {d.name: _seen(d, updates, seed=0) for d in DEFENSES}
    assert torch.equal(views["none"]["w"], updates[0]["w"])
    int8_error = (views["int8 updates"]["w"] - updates[0]["w"]).abs().max()
    four_bit_error = (views["4-bit updates"]["w"] - updates[0]["w"]).abs().max()
    assert 0 < int8_error < four_bit_error < 2.0
    assert update_norm(views["DP z=1.0"]) <= CLIP * 1.0001
    assert torch.equal(views["secure aggregation"]["w"], summed(updates)["w"])
    local = views["local DP eps=50/round"]
    assert (local["w"] - updates[0]["w"]).abs().mean() > 0.05  # noise, not just clipping


def test_the_table_has_one_row_per_defense() -> None:
    outcome = Outcome("none", 0.5, 0.6, None, 0.1, False, True, 0.9, 0.7, 0.6, 0.01, 0.4, 0.1)
    lines = table([outcome, outcome]).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| none | 0.500 | 0.600 | - | 0.10 | no |")
