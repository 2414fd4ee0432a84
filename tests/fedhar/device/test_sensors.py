"""Each sensor effect on its own, the identity when all are off, and determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedhar.device.profiles import load_catalogue
from fedhar.device.sensors import (
    SensorVariability,
    VariabilityPriors,
    apply_sensor_model,
    draw_sensor_instance,
    sinc_matrix,
)
from tests.conftest import CATALOGUE_YAML

RATE = 100.0
T = 256


@pytest.fixture(scope="module")
def instance():
    return draw_sensor_instance(load_catalogue(CATALOGUE_YAML)["nrf52840"], seed=5)


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    x = 0.3 * rng.standard_normal((40, 6, T)).astype(np.float32)  # (N, C, T)
    x[:, 2] += 1.0  # gravity on z
    return x


def only(**switches) -> SensorVariability:
    return dataclasses.replace(SensorVariability.none(), **switches)


def run(x, instance, variability, seed=0, rate=RATE):
    return apply_sensor_model(x, rate, instance, variability, seed)


def test_all_off_is_identity(windows, instance):
    out = run(windows, instance, SensorVariability.none())
    assert out.dtype == np.float32 and np.array_equal(out, windows)


def test_all_on_is_deterministic_per_seed(windows, instance):
    first = run(windows, instance, SensorVariability(), seed=3)
    assert first.shape == windows.shape and np.isfinite(first).all()
    assert np.array_equal(first, run(windows, instance, SensorVariability(), seed=3))
    assert not np.array_equal(first, run(windows, instance, SensorVariability(), seed=4))
    profile = load_catalogue(CATALOGUE_YAML)["nrf52840"]
    again = draw_sensor_instance(profile, seed=5)
    assert np.array_equal(again.rotation, instance.rotation) and again.rate_hz == instance.rate_hz
    sibling = draw_sensor_instance(load_catalogue(CATALOGUE_YAML)["esp32"], seed=5)
    assert not np.array_equal(sibling.acc_bias_g, instance.acc_bias_g)


def test_bias_shifts_mean_and_gain_scales(windows, instance):
    inst = dataclasses.replace(
        instance, acc_bias_g=np.array([0.1, -0.2, 0.05]), acc_gain=np.array([1.0, 1.0, 1.1])
    )
    out = run(windows, inst, only(bias_gain=True))
    shift = (out - windows)[:, :2].mean(axis=(0, 2))
    assert shift == pytest.approx([0.1, -0.2], abs=1e-5)
    assert out[:, 2] == pytest.approx(1.1 * windows[:, 2] + 0.05, abs=1e-5)
    gains = inst.gyro_gain[None, :, None]  # gyro gain is drawn, gyro bias is a separate switch
    assert out[:, 3:] == pytest.approx(gains * windows[:, 3:], abs=1e-5)


def test_gyro_bias_touches_only_the_gyroscope(windows, instance):
    inst = dataclasses.replace(instance, gyro_bias_rad_s=np.array([0.01, 0.02, -0.03]))
    out = run(windows, inst, only(gyro_bias=True))
    assert np.array_equal(out[:, :3], windows[:, :3])
    assert (out - windows)[:, 3:].mean(axis=(0, 2)) == pytest.approx([0.01, 0.02, -0.03], abs=1e-6)


def test_noise_has_the_drawn_spread(windows, instance):
    inst = dataclasses.replace(instance, acc_noise_sd_g=0.01, gyro_noise_sd_rad_s=0.002)
    residual = run(windows, inst, only(noise=True)) - windows
    assert residual[:, :3].std() == pytest.approx(0.01, rel=0.05)
    assert residual[:, 3:].std() == pytest.approx(0.002, rel=0.05)


def test_rotation_preserves_norm_and_turns_both_sensors_alike(windows, instance):
    out = run(windows, instance, only(rotation=True))
    assert not np.allclose(out, windows)
    for block in (slice(0, 3), slice(3, 6)):
        norms = np.linalg.norm(out[:, block], axis=1)
        assert norms == pytest.approx(np.linalg.norm(windows[:, block], axis=1), rel=1e-5)
    turned = np.einsum("ij,njt->nit", instance.rotation, windows[:, 3:])
    assert out[:, 3:] == pytest.approx(turned, abs=1e-5)


def test_misalignment_is_a_small_cross_axis_mix(windows, instance):
    out = run(windows, instance, only(misalignment=True))
    mixed = np.einsum("ij,njt->nit", instance.acc_misalignment, windows[:, :3])
    assert out[:, :3] == pytest.approx(mixed, abs=1e-5)
    assert np.abs(out - windows).max() < 0.2


@pytest.mark.parametrize("range_g", [2.0, 4.0, 8.0, 16.0])
def test_saturation_clips_at_the_full_scale(range_g):
    profile = load_catalogue(CATALOGUE_YAML)["nrf52840"]
    sensor = dataclasses.replace(profile.sensor, accel_range_g=range_g)
    inst = draw_sensor_instance(dataclasses.replace(profile, sensor=sensor), seed=5)
    x = np.zeros((2, 6, 81), np.float32)
    x[:, 0] = np.linspace(-40, 40, 81)  # g in 1 g steps, beyond every range at the ends
    x[:, 1] = np.linspace(-1.9, 1.9, 81)  # g, inside every range
    x[:, 3] = 50.0  # rad/s, beyond 2000 dps = 34.9 rad/s
    out = run(x, inst, only(saturation=True))
    assert out[:, 0].max() == pytest.approx(range_g) and out[:, 0].min() == pytest.approx(-range_g)
    inside = np.abs(x[:, 0]) < range_g
    assert inside.any() and np.array_equal(out[:, 0][inside], x[:, 0][inside])
    assert out[:, 3] == pytest.approx(np.deg2rad(2000.0))
    assert np.array_equal(out[:, 1], x[:, 1])


def test_adc_quantizes_to_the_step(windows, instance):
    out = run(windows, instance, only(adc=True)).astype(np.float64)
    step = 2 * 4.0 / 2**16
    codes = out[:, :3] / step
    assert np.abs(codes - np.round(codes)).max() < 1e-2
    assert np.abs(out[:, :3] - windows[:, :3]).max() <= step / 2 + 1e-6
    coarse = dataclasses.replace(instance, adc_bits=4)
    assert len(np.unique(run(windows, coarse, only(adc=True))[:, 0])) <= 2**4 + 1


def test_resampling_keeps_low_frequencies_and_removes_tones_above_device_nyquist(instance):
    t = np.arange(T) / RATE
    x = np.zeros((2, 6, T), np.float32)
    x[:, 2] = 1.0
    x[0, 0] = np.sin(2 * np.pi * 2.0 * t)  # 2 Hz: well inside a 25 Hz device's band
    x[1, 0] = np.sin(2 * np.pi * 20.0 * t)  # 20 Hz: above its 12.5 Hz Nyquist
    slow = dataclasses.replace(instance, rate_hz=25.0, nominal_rate_hz=25.0)
    out = run(x, slow, only(sampling_rate=True))
    inner = slice(64, T - 64)  # away from the window edges
    assert np.abs(out[0, 0, inner] - x[0, 0, inner]).max() < 1e-3
    assert np.abs(out[1, 0, inner]).max() < 1e-3
    assert out[:, 2] == pytest.approx(1.0, abs=1e-5)  # gravity survives, edges included


def test_clock_error_stretches_time(instance):
    t = np.arange(T) / RATE
    x = np.zeros((1, 6, T), np.float32)
    x[0, 0] = np.sin(2 * np.pi * 1.0 * t)
    fast_clock = dataclasses.replace(instance, rate_hz=105.0, nominal_rate_hz=100.0)
    out = run(x, fast_clock, only(sampling_rate=True))
    expected = np.sin(2 * np.pi * 1.0 * t * 100.0 / 105.0)  # reported times run 5 % fast
    assert np.abs(out[0, 0, 64:192] - expected[64:192]).max() < 1e-2


def test_jitter_perturbs_fast_signals_more_than_slow(instance):
    t = np.arange(T) / RATE
    x = np.zeros((2, 6, T), np.float32)
    x[0, 0] = np.sin(2 * np.pi * 1.0 * t)
    x[1, 0] = np.sin(2 * np.pi * 10.0 * t)
    shaky = dataclasses.replace(instance, jitter_frac=0.2)
    out = run(x, shaky, only(jitter=True), seed=1)
    error = np.abs(out - x)[:, 0, 32:-32].std(axis=-1)
    assert 0 < error[0] < error[1]
    assert not np.array_equal(out, run(x, shaky, only(jitter=True), seed=2))


@pytest.mark.parametrize("fill", ["hold", "zero"])
def test_missing_bursts(windows, instance, fill):
    bursty = dataclasses.replace(instance, burst_rate_hz=2.0, burst_mean_len_s=0.1)
    out = run(windows, bursty, only(missing=True, missing_fill=fill))
    changed = (out != windows).any(axis=1)  # (N, T) every channel drops together
    assert changed.mean() == pytest.approx(2.0 * 0.1, abs=0.08)
    assert not changed[:, 0].any()  # bursts start after the first sample
    n, k = np.nonzero(changed)
    if fill == "zero":
        assert (out[n, :, k] == 0).all()
    else:
        held = out[n, :, k]
        assert (held == out[n, :, k - 1]).all()


def test_priors_drive_the_draw():
    profile = load_catalogue(CATALOGUE_YAML)["esp32"]
    calm = VariabilityPriors(rate_rel_sd=0.0, rotation_sd_deg=0.0, acc_bias_sd_g=0.0)
    inst = draw_sensor_instance(profile, seed=1, priors=calm)
    assert inst.rate_hz == profile.sensor.rate_hz
    assert np.allclose(inst.rotation, np.eye(3)) and not inst.acc_bias_g.any()


def test_rejects_unexpected_channels(instance):
    with pytest.raises(ValueError, match="channels"):
        run(np.zeros((1, 4, 8), np.float32), instance, SensorVariability())
    with pytest.raises(ValueError, match="missing_fill"):
        SensorVariability(missing_fill="interpolate")


def test_an_instant_beyond_every_source_sample_holds_the_nearest_one():
    src = np.arange(100) / 50.0  # two seconds at 50 Hz
    dst = np.array([0.5, 1.0, 2.5, 3.0])  # the last two are past the kernel's reach
    weights = sinc_matrix(src, dst, cutoff_hz=20.0)
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert weights[2, -1] == 1.0 and weights[3, -1] == 1.0
    signal = np.sin(2 * np.pi * src)
    np.testing.assert_allclose(weights[:2] @ signal, np.sin(2 * np.pi * dst[:2]), atol=1e-2)
