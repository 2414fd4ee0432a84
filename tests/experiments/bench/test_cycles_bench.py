"""The cycle-model check: the KWS DS-CNN replica is MLPerf Tiny's network, op for op."""

from __future__ import annotations

import pytest
import torch

from experiments.bench.cycles import KWS_MACS, PUBLISHED, kws_dscnn, kws_inference_ops, main


def test_the_replica_has_the_reference_models_shapes_and_macs() -> None:
    model = kws_dscnn()
    stem = model[:2](torch.zeros(1, 1, 49, 10))
    assert tuple(stem.shape) == (1, 64, 25, 5)  # the reference's first layer output
    assert tuple(model(torch.zeros(1, 1, 49, 10)).shape) == (1, 12)
    ops = kws_inference_ops()
    # 10x4 stem (320,000), four blocks of depthwise 3x3 (72,000) and pointwise (512,000),
    # dense 64 -> 12 (768): the reference model's layer shapes
    assert ops.macs == KWS_MACS == 320_000 + 4 * (72_000 + 512_000) + 768
    assert ops.requantize == 9 * 25 * 5 * 64 + 12 and ops.compares == 9 * 25 * 5 * 64


def test_the_table_has_one_row_per_published_latency(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Cortex")]
    assert len(rows) == len(PUBLISHED)
    for row, entry in zip(rows, PUBLISHED, strict=True):
        published_ms = float(row.split("|")[4])
        assert published_ms == pytest.approx(1e3 / entry.inferences_per_s, abs=0.05)
