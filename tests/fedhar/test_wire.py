"""fedhar.wire: typed reads of reply records."""

from __future__ import annotations

import pytest
from flwr.app import MetricRecord, RecordDict

from fedhar.wire import METRICS_KEY, metric_value


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
