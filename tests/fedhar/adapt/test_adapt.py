"""Per-user adaptation: few-shot splits, the bout split, fine-tuning within the device's plan,
and the per-user summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhar.adapt.finetune import FineTune, fine_tune
from fedhar.adapt.shots import few_shot_split, shot_cut
from fedhar.adapt.summary import summarize, worst_decile
from fedhar.data.dataset import WindowDataset
from fedhar.data.splits import split_bout_heads, window_duration_s
from fedhar.data.synthetic import SyntheticConfig, load_synthetic
from fedhar.device.local_update import QuantSettings, plan_on_device
from fedhar.device.planner import trainable_names
from fedhar.device.profiles import load_catalogue
from fedhar.models import ModelShape
from tests.conftest import CATALOGUE_YAML


@pytest.fixture(scope="module")
def windows() -> WindowDataset:
    data = load_synthetic(SyntheticConfig(num_users=2, seconds_per_user=120, seed=3))
    return data.for_user(data.users[0])


@pytest.mark.parametrize("k", [1, 5, 10])
def test_shots_come_before_the_test_windows_with_a_gap(windows: WindowDataset, k: int) -> None:
    shots, test = few_shot_split(windows, k)
    duration = window_duration_s(windows)
    assert len(shots) > 0 and len(test) > 0
    assert shots.start_time_s.max() + 2 * duration <= test.start_time_s.min() + 1e-9
    counts = np.bincount(shots.y, minlength=windows.num_classes)
    present = np.unique(windows.y)
    assert all(counts[c] == min(k, int((windows.y == c).sum())) for c in present)
    assert not set(shots.start_time_s.tolist()) & set(test.start_time_s.tolist())


def test_every_k_is_tested_on_the_same_windows(windows: WindowDataset) -> None:
    cut = shot_cut(windows, 10)
    tests = [few_shot_split(windows, k, test_after_s=cut)[1] for k in (1, 5, 10)]
    assert all(np.array_equal(t.start_time_s, tests[0].start_time_s) for t in tests)
    with pytest.raises(ValueError, match="falls before"):
        few_shot_split(windows, 10, test_after_s=shot_cut(windows, 1))
    with pytest.raises(ValueError, match="shorter than one window"):
        few_shot_split(windows, 1, gap_s=0.0)


def test_bout_heads_are_test_and_no_train_window_overlaps_them(windows: WindowDataset) -> None:
    train, test = split_bout_heads(windows, test_fraction=0.2)
    duration = window_duration_s(windows)
    assert len(test) > 0 and len(train) > len(test)
    for start in train.start_time_s:  # no train window overlaps any test window
        assert np.all(
            (start + duration <= test.start_time_s) | (start >= test.start_time_s + duration)
        )
    first = np.argmin(windows.start_time_s)
    assert windows.start_time_s[first] in set(test.start_time_s.tolist())  # a bout's first window


SHAPE = ModelShape("microbi_convlstm", 6, 4, 64)


def _windows(n: int = 40) -> WindowDataset:
    rng = np.random.default_rng(0)
    return WindowDataset(
        x=rng.standard_normal((n, 6, 64)).astype(np.float32), y=rng.integers(0, 4, n),
        user=np.array(["u"] * n), device=np.array(["d"] * n),
        start_time_s=np.arange(n, dtype=float), class_names=("a", "b", "c", "d"),
        channel_names=tuple("abcdef"), sampling_rate_hz=50.0,
    )  # fmt: skip


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    old = dict(before.named_parameters())
    return {n for n, p in after.named_parameters() if not torch.equal(p.detach(), old[n].detach())}


@pytest.mark.parametrize("scope", ["all", "head", "bias"])
def test_fine_tuning_never_exceeds_the_device_plan(scope: str) -> None:
    device = load_catalogue(CATALOGUE_YAML)["stm32f446"]  # its plan trains the last 2 groups
    plan = plan_on_device(device, SHAPE, 1.0, QuantSettings())
    assert plan.mode == "last_k"
    torch.manual_seed(0)
    model = SHAPE.build(1.0)
    start = SHAPE.build(1.0)
    start.load_state_dict(model.state_dict())
    adapted = fine_tune(model, SHAPE, device, QuantSettings(), _windows(),
                        FineTune(scope, epochs=1, batch_size=32), seed=0)  # fmt: skip
    allowed = set(trainable_names(SHAPE.build(1.0), plan))
    assert set(adapted.trained) <= allowed
    assert adapted.batch_size <= plan.batch_size
    changed = {n.removeprefix("module.") for n in _changed(start, adapted.model)}
    assert changed and changed <= allowed
    if scope == "head":
        assert all(n.startswith("head.") for n in changed)


def test_without_a_device_all_scope_trains_every_parameter() -> None:
    torch.manual_seed(0)
    model = SHAPE.build(1.0)
    start = SHAPE.build(1.0)
    start.load_state_dict(model.state_dict())
    adapted = fine_tune(model, SHAPE, None, QuantSettings(), _windows(), FineTune(epochs=1), 0)
    assert len(adapted.trained) == len(list(start.parameters()))
    assert _changed(start, adapted.model) == {n for n, _ in start.named_parameters()}


def test_summary_counts_improved_and_worse_than_local_per_user() -> None:
    per_user = {
        "global": np.array([0.5, 0.5, 0.5, 0.5]),
        "ft": np.array([0.6, 0.4, 0.7, 0.5]),
        "local_only": np.array([0.55, 0.3, 0.8, 0.2]),
    }
    summary = summarize(per_user, "global", "local_only", seed=0)
    assert summary["ft"]["improved"].value == 0.5  # users 0 and 2
    assert summary["ft"]["worse_than_local"].value == 0.25  # user 2
    assert summary["global"]["worse_than_local"].value == 0.5  # users 0 and 2
    assert summary["ft"]["mean"].low <= summary["ft"]["mean"].value <= summary["ft"]["mean"].high
    assert summary["ft"]["median"].value == 0.55
    assert worst_decile(np.array([0.9, 0.1, 0.5])) == 0.1
    assert "improved" not in summary["global"]
