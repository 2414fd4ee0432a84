"""fedhar.wire: typed reads of reply records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from fedhar.partial.static_bn import MomentSums
from fedhar.wire import (
    BN_SUMS_PREFIX,
    METRICS_KEY,
    arrays_to_numpy,
    bn_stats_request,
    bn_stats_request_from_record,
    bn_sums_from_reply,
    bn_sums_reply,
    metric_value,
    numpy_to_arrays,
)


def _content(**metrics: int | float | list[float]) -> RecordDict:
    return RecordDict({METRICS_KEY: MetricRecord(dict(metrics))})


def test_metric_value_reads_numbers_as_floats_and_falls_back_to_the_default() -> None:
    content = _content(**{"num-examples": 12, "sim-compute-s": 0.25})
    assert metric_value(content, "num-examples") == 12.0
    assert metric_value(content, "sim-compute-s", default=0.0) == 0.25
    assert metric_value(content, "energy-j", default=1.5) == 1.5
    assert metric_value(RecordDict(), "sim-compute-s", default=0.0) == 0.0


def test_metric_value_names_a_missing_or_non_numeric_metric() -> None:
    with pytest.raises(ValueError, match="'num-examples' is None"):
        metric_value(_content(), "num-examples")
    with pytest.raises(ValueError, match=r"'losses' is \[0\.5\], not a number"):
        metric_value(_content(losses=[0.5]), "losses")


def test_numpy_round_trip_keeps_scalar_buffers_scalar() -> None:
    import numpy as np

    from fedhar.wire import arrays_to_numpy, numpy_to_arrays

    state = {
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "w": np.ones((2, 3), np.float32),
    }
    back = arrays_to_numpy(numpy_to_arrays(state))
    assert back["bn.num_batches_tracked"].shape == () and back["w"].shape == (2, 3)


def _sums() -> dict[float, dict[str, MomentSums]]:
    def sums(channels: int, seed: int) -> MomentSums:
        gen = torch.Generator().manual_seed(seed)
        total = torch.randn(channels, generator=gen, dtype=torch.float64)
        return MomentSums(96.0, total, total.square() + 1.0)

    return {0.5: {"bn1": sums(8, 1), "bn2": sums(12, 2)}, 1.0: {"bn1": sums(16, 3)}}


def test_batchnorm_sums_round_trip_exactly() -> None:
    back = bn_sums_from_reply(bn_sums_reply(_sums()))
    assert sorted(back) == [0.5, 1.0]
    for width, layers in _sums().items():
        assert set(back[width]) == set(layers)
        for name, s in layers.items():
            assert back[width][name].count == s.count
            torch.testing.assert_close(back[width][name].total, s.total, rtol=0, atol=0)
            torch.testing.assert_close(back[width][name].squares, s.squares, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("bn1/squares", None, "lacks count, total or squares"),
        ("bn1/total", np.zeros(3), "malformed shapes"),
        ("bn1/count", np.array([np.nan]), "non-finite"),
    ],
)
def test_malformed_batchnorm_sums_are_refused(entry: str, value, message: str) -> None:
    content = bn_sums_reply(_sums())
    arrays = arrays_to_numpy(content.array_records[f"{BN_SUMS_PREFIX}1"])
    if value is None:
        del arrays[entry]
    else:
        arrays[entry] = value
    content.array_records[f"{BN_SUMS_PREFIX}1"] = numpy_to_arrays(arrays)
    with pytest.raises(ValueError, match=message):
        bn_sums_from_reply(content)


def test_a_batchnorm_query_round_trips_and_needs_its_widths() -> None:
    state = {"w": torch.arange(4.0)}
    back, widths, batch = bn_stats_request_from_record(bn_stats_request(state, [0.25, 1.0], 16))
    torch.testing.assert_close(back["w"], state["w"])
    assert (widths, batch) == ([0.25, 1.0], 16)
    with pytest.raises(ValueError, match="must list the widths"):
        bn_stats_request_from_record(bn_stats_request(state, [], 16))
    with pytest.raises(ValueError, match="needs"):
        bn_stats_request_from_record(RecordDict())
