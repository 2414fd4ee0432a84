"""The cycle model's calibration: reference networks that are the published ones op for op, and
a catalogue whose MCU rates reproduce the published latencies of their cores."""

from __future__ import annotations

import dataclasses
from statistics import median

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench.cycles import (
    HELD_OUT,
    KWS_MACS,
    POOL_COMPARES,
    POOL_TAPS,
    PUBLISHED,
    PUBLISHED_OPS,
    VWW_MACS,
    Published,
    calibrated_rates,
    held_out_ratios,
    implied_macs_per_cycle,
    inference_ops,
    kws_dscnn,
    main,
    op_cost_sensitivity,
    person_detection_mobilenet,
    predicted_latency_s,
    published_op_costs,
)
from experiments.compose import CONFIG_DIR
from fedhar.device.costs import CYCLES_PER_OP
from fedhar.device.profiles import DeviceProfile, load_catalogue

CATALOGUE = load_catalogue(CONFIG_DIR / "fleet" / "devices" / "catalogue.yaml")
MCUS = [profile for profile in CATALOGUE.values() if profile.kind == "mcu"]


def test_the_kws_replica_has_the_reference_models_shapes_and_macs() -> None:
    model = kws_dscnn()
    stem = model[:2](torch.zeros(1, 1, 49, 10))
    assert tuple(stem.shape) == (1, 64, 25, 5)  # the reference's first layer output
    assert tuple(model(torch.zeros(1, 1, 49, 10)).shape) == (1, 12)
    ops = inference_ops("kws")
    # 10x4 stem (320,000), four blocks of depthwise 3x3 (72,000) and pointwise (512,000),
    # dense 64 -> 12 (768): the reference model's layer shapes
    assert ops.macs == KWS_MACS == 320_000 + 4 * (72_000 + 512_000) + 768
    assert ops.requantize == 9 * 25 * 5 * 64 + 12 and ops.compares == 9 * 25 * 5 * 64


def test_the_person_detection_replica_is_mobilenet_v1_at_width_a_quarter() -> None:
    model = person_detection_mobilenet(in_channels=3)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        features = model[:-3](torch.zeros(1, 3, 96, 96))
    assert tuple(features.shape) == (1, 256, 3, 3)  # MobileNetV1 0.25: 96 / 32, 1024 / 4
    # MLPerf Tiny's visual wake words model is this network on RGB input
    assert flops.get_total_flops() // 2 + 256 * 2 == VWW_MACS
    grayscale = inference_ops("person_detection")
    assert grayscale.macs == VWW_MACS - 48 * 48 * 8 * 9 * 2  # the stem sees 1 channel, not 3
    assert tuple(person_detection_mobilenet()(torch.zeros(1, 1, 96, 96)).shape) == (1, 2)


@pytest.mark.parametrize("entry", PUBLISHED, ids=lambda entry: f"{entry.source} {entry.system}")
def test_an_implied_rate_reproduces_its_published_latency(entry: Published) -> None:
    ops = inference_ops(entry.network)
    profile = dataclasses.replace(MCUS[0], macs_per_cycle=implied_macs_per_cycle(entry, ops))
    assert predicted_latency_s(profile, entry, ops) == pytest.approx(entry.latency_s, rel=1e-9)


def test_every_mcu_core_of_the_catalogue_has_published_latencies() -> None:
    cores = {entry.core for entry in PUBLISHED}
    assert {profile.core for profile in MCUS} <= cores, "calibrate a new core in bench.cycles"


@pytest.mark.parametrize("profile", MCUS, ids=lambda profile: profile.name)
def test_the_catalogue_rate_is_the_median_of_its_cores_published_figures(
    profile: DeviceProfile,
) -> None:
    ops = {network: inference_ops(network) for network in ("kws", "person_detection")}
    figures = [entry for entry in PUBLISHED if entry.core == profile.core]
    ratios = [e.latency_s / predicted_latency_s(profile, e, ops[e.network]) for e in figures]
    assert median(ratios) == pytest.approx(1.0, abs=0.05), profile.name
    assert profile.macs_per_cycle == pytest.approx(calibrated_rates()[profile.core], rel=0.02)


def test_rates_calibrated_on_keyword_spotting_predict_the_held_out_visual_wake_words() -> None:
    ratios = held_out_ratios(MCUS)
    assert sum(len(values) for values in ratios.values()) == len(HELD_OUT)
    assert {entry.network for entry in HELD_OUT} == {"vww"}
    for core, values in ratios.items():
        # the catalogue's latency sits at the median of the held-out published ones
        assert 0.85 < median(values) < 1.15, (core, median(values))


def test_the_table_has_one_row_per_published_latency(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.count("|") == 9 and line.startswith(("| cortex", "| xt"))]
    assert len(rows) == len(PUBLISHED)
    by_core = {profile.core: profile for profile in MCUS}
    for row, entry in zip(rows, PUBLISHED, strict=True):
        published_ms, catalogue_ms = (float(cell) for cell in row.split("|")[5:7])
        assert published_ms == pytest.approx(entry.latency_s * 1e3, abs=0.05)
        predicted = predicted_latency_s(by_core[entry.core], entry, inference_ops(entry.network))
        assert catalogue_ms == pytest.approx(predicted * 1e3, abs=0.05)


def test_the_pooling_kernels_operation_counts_follow_their_shape() -> None:
    # ESP-NN's pooling test: 16x16x16 input, 3x3 window, stride 1, padding 1; padded taps are
    # not operations, and a window of n taps takes n - 1 compares
    taps = int(torch.nn.functional.unfold(torch.ones(1, 1, 16, 16), 3, padding=1).sum()) * 16
    assert POOL_TAPS == taps == 33_856
    assert taps - 16 * 16 * 16 == POOL_COMPARES


def test_published_op_costs_replace_only_the_measured_kinds_of_that_core() -> None:
    assert published_op_costs("cortex-m4f") == CYCLES_PER_OP  # no kernel figure for Cortex-M
    lx7 = published_op_costs("xtensa-lx7")
    assert lx7["compares"] == pytest.approx(median([76_747 / 29_760, 1_856 / 3_230]))
    # a bound is not a figure: the rest stay as assumed
    assert {kind: lx7[kind] for kind in CYCLES_PER_OP if kind != "compares"} == {
        kind: cost for kind, cost in CYCLES_PER_OP.items() if kind != "compares"
    }
    assert {op.core for op in PUBLISHED_OPS} == {"xtensa-lx6", "xtensa-lx7"}


@pytest.mark.parametrize("core", ["xtensa-lx6", "xtensa-lx7"])
def test_the_recalibrated_rate_still_reproduces_the_cores_published_latency(core: str) -> None:
    profile = next(p for p in MCUS if p.core == core)
    costs = published_op_costs(core)
    rate = op_cost_sensitivity(profile).macs_per_cycle
    (entry,) = [e for e in PUBLISHED if e.core == core]
    ops = inference_ops(entry.network)
    cycles = ops.macs / rate + sum(getattr(ops, kind) * c for kind, c in costs.items())
    assert cycles == pytest.approx(entry.latency_s * entry.clock_hz, rel=1e-9)
    assert costs["compares"] > CYCLES_PER_OP["compares"]  # dearer compares leave fewer MACs
    assert rate > calibrated_rates()[core]


def test_a_core_without_kernel_figures_keeps_its_training_time() -> None:
    m7 = next(p for p in MCUS if p.core == "cortex-m7")
    assert op_cost_sensitivity(m7).training_step_ratio == pytest.approx(1.0, rel=1e-12)


def test_the_bench_prints_every_published_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    out = capsys.readouterr().out
    for op in PUBLISHED_OPS:
        assert f"| {op.core} | {op.kind} | {op.kernel} | {op.cycles_per_op:.2f}" in out
