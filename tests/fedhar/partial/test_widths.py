"""Width assignment policies: HeteroFL, FedRolex, FjORD."""

from __future__ import annotations

import pytest
from torch import nn

from fedhar.partial.spec import slice_width
from fedhar.partial.widths import (
    FedRolexWidths,
    FjORDWidths,
    HeteroFLWidths,
    WidthAssignment,
    allowed_levels,
)

LEVELS = (0.25, 0.5, 0.75, 1.0)


def test_heterofl_takes_the_largest_fitting_level_at_offset_zero() -> None:
    policy = HeteroFLWidths(LEVELS)
    assert policy.assign(0.8, 3, 11) == WidthAssignment(0.75, 0)
    assert {policy.assign(0.5, r, 2) for r in range(10)} == {WidthAssignment(0.5, 0)}
    assert policy.assign(1.0, 1, 0).width == 1.0


def test_fedrolex_window_moves_each_round_and_covers_every_unit() -> None:
    policy = FedRolexWidths(LEVELS)
    offsets = [policy.assign(0.3, r, 4).offset for r in range(6)]
    assert offsets == [0, 1, 2, 3, 4, 5]
    full = nn.Sequential(nn.Conv1d(2, 6, 1), nn.Conv1d(6, 3, 1))
    sub = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Conv1d(2, 3, 1))  # ceil(6 * 0.25) = 2
    covered: set[int] = set()
    windows = []
    for r in range(6):
        a = policy.assign(0.3, r, 4)
        sl = slice_width(full, sub, a.width, a.offset).slices()
        kept = sl["0.weight"].indices[0]
        assert sl["1.weight"].indices[1] == kept  # the next layer reads the same units
        windows.append(kept)
        covered.update(kept)
    assert covered == set(range(6))
    assert len(set(windows)) == 6


def test_fjord_samples_only_fitting_levels_and_all_of_them() -> None:
    policy = FjORDWidths(LEVELS, seed=3)
    widths = [policy.assign(0.75, r, n).width for r in range(20) for n in range(5)]
    assert set(widths) == {0.25, 0.5, 0.75}
    assert {policy.assign(0.75, r, 0).offset for r in range(20)} == {0}


def test_policies_are_deterministic_and_seeded() -> None:
    a = [FjORDWidths(LEVELS, seed=1).assign(1.0, r, 9).width for r in range(30)]
    b = [FjORDWidths(LEVELS, seed=1).assign(1.0, r, 9).width for r in range(30)]
    c = [FjORDWidths(LEVELS, seed=2).assign(1.0, r, 9).width for r in range(30)]
    assert a == b
    assert a != c
    assert FedRolexWidths().assign(0.6, 7, 1) == FedRolexWidths().assign(0.6, 7, 1)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"below the smallest level 0\.25"):
        HeteroFLWidths(LEVELS).assign(0.1, 1, 0)
    with pytest.raises(ValueError, match="strictly increasing"):
        allowed_levels(1.0, (0.5, 0.25))
    with pytest.raises(ValueError, match=r"widths in \(0, 1\]"):
        allowed_levels(1.0, (0.5, 2.0))
    with pytest.raises(ValueError, match="server_round must be >= 0"):
        FjORDWidths().assign(1.0, -1, 0)
