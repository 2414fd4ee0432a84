"""Per-device sensor variability: how one wearable's IMU distorts the signal a model sees.

The effects and the size of their spread follow what cross-device HAR studies measured:
Stisen et al., "Smart Devices are Different" (SenSys 2015, the HHAR dataset) report differing
and unstable sampling rates, irregular timestamps, and per-device accelerometer bias and gain;
Kos et al., "Evaluation of Smartphone Inertial Sensor Performance for Cross-Platform Mobile
Applications" (Sensors 2016) measure accelerometer and gyroscope bias and noise across phones.
Where the papers give ranges rather than distributions, the priors below are assumptions that
stay inside those ranges and inside the IMU datasheets' tolerances (BMI270, LSM6DS-series).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedhar.device.profiles import DeviceProfile


@dataclass(frozen=True)
class SensorVariability:
    """On/off switch per effect; with every switch off the sensor model is the identity."""

    sampling_rate: bool = True  # device rate and its clock error, with anti-aliasing
    jitter: bool = True  # sample instants scatter around the nominal grid
    rotation: bool = True  # placement: the device sits rotated on the body
    misalignment: bool = True  # cross-axis sensitivity inside the IMU
    bias_gain: bool = True  # accelerometer bias, per-axis gain of both sensors
    gyro_bias: bool = True  # gyroscope zero-rate offset
    noise: bool = True  # white noise on both sensors
    missing: bool = True  # bursts of dropped samples
    missing_fill: str = "hold"  # "hold" repeats the last sample, "zero" writes zeros
    saturation: bool = True  # clip at the IMU's full-scale range
    adc: bool = True  # quantize to the IMU's output resolution

    def __post_init__(self) -> None:
        if self.missing_fill not in ("hold", "zero"):
            raise ValueError(f"missing_fill must be 'hold' or 'zero', got {self.missing_fill!r}")

    @classmethod
    def none(cls) -> SensorVariability:
        """Every effect switched off."""
        switches: dict[str, Any] = {f.name: False for f in fields(cls) if f.name != "missing_fill"}
        return cls(**switches)


@dataclass(frozen=True)
class VariabilityPriors:
    """Distributions the per-device parameters are drawn from, with their grounding."""

    # Clock error: actual rate / nominal - 1 ~ N(0, sd). Stisen et al. find real rates off the
    # nominal one and drifting; +-1 % (1 sd) is a conservative reading of their plots.
    rate_rel_sd: float = 0.01
    # Timestamp jitter, sd as a fraction of the sample period, ~ U(lo, hi). Stisen et al. show
    # irregular inter-sample intervals on Android devices; 0-20 % of a period.
    jitter_frac: tuple[float, float] = (0.0, 0.2)
    # Accelerometer bias per axis ~ N(0, sd) in g. BMI270/LSM6DS zero-g offset is +-20-40 mg;
    # Stisen et al. and Kos et al. see stationary-magnitude offsets of this order across phones.
    acc_bias_sd_g: float = 0.02
    # Gain per axis ~ 1 + N(0, sd) for both sensors; datasheet sensitivity tolerance ~1 %.
    gain_sd: float = 0.01
    # White noise sd ~ log-uniform(lo, hi). Acc: 90-200 ug/sqrt(Hz) noise density over a 50 Hz
    # band gives ~1 mg, phones filter less well (Kos et al.) -> up to 10 mg.
    acc_noise_sd_g: tuple[float, float] = (0.001, 0.01)
    # Gyro noise density ~4-7 mdps/sqrt(Hz) -> ~0.05 dps, phones up to ~0.3 dps (rad/s here).
    gyro_noise_sd_rad_s: tuple[float, float] = (0.001, 0.005)
    # Gyroscope zero-rate offset per axis ~ N(0, sd); Kos et al. report uncalibrated phone gyro
    # biases of tenths of a degree per second, datasheets +-0.5-1 dps -> 0.5 dps (rad/s here).
    gyro_bias_sd_rad_s: float = 0.0087
    # Cross-axis sensitivity: off-diagonal terms ~ N(0, sd); datasheets list +-1 %.
    misalignment_sd: float = 0.01
    # Placement: rotation about a uniformly random axis by angle ~ N(0, sd) degrees
    # (a watch strapped looser or tighter, a phone turned in a pocket).
    rotation_sd_deg: float = 10.0
    # Dropped-sample bursts per second ~ U(0, hi), mean burst length in seconds (geometric).
    burst_rate_hz: tuple[float, float] = (0.0, 0.05)
    burst_mean_len_s: float = 0.1


@dataclass(frozen=True, eq=False)
class SensorInstance:
    """The drawn parameters of one physical device; fixed for the device's lifetime."""

    rate_hz: float  # actual output rate
    nominal_rate_hz: float  # the rate the device reports (timestamps are taken as nominal)
    jitter_frac: float  # timestamp jitter sd as a fraction of the sample period
    rotation: np.ndarray  # (3, 3) placement rotation, applied to acc and gyro alike
    acc_misalignment: np.ndarray  # (3, 3) near identity
    gyro_misalignment: np.ndarray  # (3, 3)
    acc_gain: np.ndarray  # (3,)
    gyro_gain: np.ndarray  # (3,)
    acc_bias_g: np.ndarray  # (3,)
    gyro_bias_rad_s: np.ndarray  # (3,)
    acc_noise_sd_g: float
    gyro_noise_sd_rad_s: float
    burst_rate_hz: float
    burst_mean_len_s: float
    acc_range_g: float
    gyro_range_rad_s: float
    adc_bits: int


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula: rotation by `angle` radians about unit `axis`."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def draw_sensor_instance(
    profile: DeviceProfile, seed: int, priors: VariabilityPriors | None = None
) -> SensorInstance:
    """Draw one device's sensor parameters; every parameter is drawn whatever the switches.

    The profile's name is mixed into `seed`, so one user's phone and watch differ.
    """
    p = priors or VariabilityPriors()
    rng = np.random.default_rng([seed, zlib.crc32(profile.name.encode())])
    spec = profile.sensor
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)

    def cross_axis() -> np.ndarray:
        return np.eye(3) + rng.normal(0, p.misalignment_sd, (3, 3)) * (1 - np.eye(3))

    return SensorInstance(
        rate_hz=spec.rate_hz * (1 + rng.normal(0, p.rate_rel_sd)),
        nominal_rate_hz=spec.rate_hz,
        jitter_frac=rng.uniform(*p.jitter_frac),
        rotation=_rotation(axis, np.deg2rad(rng.normal(0, p.rotation_sd_deg))),
        acc_misalignment=cross_axis(),
        gyro_misalignment=cross_axis(),
        acc_gain=1 + rng.normal(0, p.gain_sd, 3),
        gyro_gain=1 + rng.normal(0, p.gain_sd, 3),
        acc_bias_g=rng.normal(0, p.acc_bias_sd_g, 3),
        gyro_bias_rad_s=rng.normal(0, p.gyro_bias_sd_rad_s, 3),
        acc_noise_sd_g=float(np.exp(rng.uniform(*np.log(p.acc_noise_sd_g)))),
        gyro_noise_sd_rad_s=float(np.exp(rng.uniform(*np.log(p.gyro_noise_sd_rad_s)))),
        burst_rate_hz=rng.uniform(*p.burst_rate_hz),
        burst_mean_len_s=p.burst_mean_len_s,
        acc_range_g=spec.accel_range_g,
        gyro_range_rad_s=float(np.deg2rad(spec.gyro_range_dps)),
        adc_bits=spec.adc_bits,
    )


def sinc_matrix(src_s: np.ndarray, dst_s: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """(len(dst), len(src)) windowed-sinc low-pass interpolation between two time grids.

    Blackman-windowed sinc with ten zero crossings a side; rows sum to one so that a
    constant (gravity) passes unchanged, also where the kernel is cut at the window edges. A
    destination instant out of the kernel's reach of every source takes the nearest source.
    """
    half_width = 10 / (2 * cutoff_hz)
    dt = dst_s[:, None] - src_s[None, :]  # (D, S)
    inside = np.abs(dt) < half_width
    window = (
        0.42 + 0.5 * np.cos(np.pi * dt / half_width) + 0.08 * np.cos(2 * np.pi * dt / half_width)
    )
    kernel = np.where(inside, np.sinc(2 * cutoff_hz * dt) * window, 0.0)
    # an instant beyond the reach of every source sample (a slow clock sampling past the end of
    # a long recording) holds the nearest sample
    empty = np.abs(kernel.sum(axis=1)) < 1e-12
    kernel[empty, np.abs(dt[empty]).argmin(axis=1)] = 1.0
    return kernel / kernel.sum(axis=1, keepdims=True)


def _sample(
    x: np.ndarray, rate_hz: float, true_s: np.ndarray, jitter_s: np.ndarray | None, cutoff_hz: float
) -> np.ndarray:
    """Read `x` (N, C, T) behind a low-pass at `cutoff_hz` at instants `true_s` (K,).

    Per-window jitter `jitter_s` (N, K) moves each instant; its effect is taken to first order,
    sample + jitter * slope, which holds while the jitter is a fraction of a sample period.
    """
    grid = np.arange(x.shape[-1]) / rate_hz
    weights = sinc_matrix(grid, true_s, cutoff_hz)  # (K, T)
    y = x @ weights.T.astype(x.dtype)  # (N, C, K)
    if jitter_s is None:
        return y
    slope = np.gradient(weights, true_s[1] - true_s[0], axis=0)  # (K, T) d/dt of the reading
    return y + jitter_s[:, None, :] * (x @ slope.T.astype(x.dtype))


def _burst_mask(
    rng: np.random.Generator, n: int, k: int, rate_hz: float, inst: SensorInstance
) -> np.ndarray:
    """(N, K) True where a sample is dropped; bursts start after the first sample."""
    if k < 2:
        return np.zeros((n, k), dtype=bool)
    counts = rng.poisson(inst.burst_rate_hz * k / rate_hz, n)  # (N,)
    b = max(int(counts.max(initial=0)), 1)
    starts = rng.integers(1, k, (n, b))  # (N, B)
    lengths = rng.geometric(1 / max(inst.burst_mean_len_s * rate_hz, 1.0), (n, b))
    valid = np.arange(b)[None, :] < counts[:, None]  # (N, B)
    idx = np.arange(k)[None, None, :]  # (1, 1, K)
    hit = (idx >= starts[..., None]) & (idx < (starts + lengths)[..., None]) & valid[..., None]
    return np.asarray(hit.any(axis=1))


def _fill(x: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    """Replace masked samples of `x` (N, C, K): repeat the last kept sample, or zero."""
    if how == "zero":
        return np.where(mask[:, None, :], np.float32(0), x)
    k = x.shape[-1]
    last_kept = np.maximum.accumulate(np.where(mask, 0, np.arange(k)), axis=1)  # (N, K)
    return np.take_along_axis(x, last_kept[:, None, :], axis=2)


def _errors(x: np.ndarray, gain: np.ndarray, cross: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Cross-axis mixing, per-axis gain and bias on one (N, 3, K) sensor block."""
    mix = (gain[:, None] * cross).astype(np.float32)
    return np.einsum("ij,njk->nik", mix, x) + bias[None, :, None].astype(np.float32)


def apply_sensor_model(
    windows: np.ndarray,
    rate_hz: float,
    instance: SensorInstance,
    variability: SensorVariability,
    seed: int,
) -> np.ndarray:
    """Windows as the device would have recorded them, back on the model's time grid.

    `windows` (N, C, T) float32 at `rate_hz` hold acc xyz in g, then (C = 6) gyro xyz in rad/s.
    The chain follows the physics: placement rotation, sampling at the device's (jittered,
    clock-skewed) instants behind an anti-aliasing filter, cross-axis/gain/bias, noise,
    full-scale clipping, quantization, dropped bursts, and resampling back to `rate_hz` from the
    timestamps the device reports. `seed` drives the per-call noise, jitter and bursts.
    """
    n, c, t = windows.shape
    if c not in (3, 6):
        raise ValueError(f"expected 3 (acc xyz) or 6 (acc xyz + gyro xyz) channels, got {c}")
    v, inst = variability, instance
    rng = np.random.default_rng(seed)
    blocks = [windows[:, i : i + 3].astype(np.float32) for i in range(0, c, 3)]  # (N, 3, T) each
    if v.rotation:
        blocks = [np.einsum("ij,njt->nit", inst.rotation.astype(np.float32), b) for b in blocks]
    x = np.concatenate(blocks, axis=1)  # (N, C, T)
    resample = v.sampling_rate or v.jitter
    true_rate, nominal = (
        (inst.rate_hz, inst.nominal_rate_hz) if v.sampling_rate else (rate_hz, rate_hz)
    )
    if resample:
        k = int(np.floor((t - 1) * nominal / rate_hz)) + 1
        jitter = None
        if v.jitter:
            jitter = rng.normal(0, inst.jitter_frac / nominal, (n, k)).astype(np.float32)  # (N, K)
        cutoff = 0.8 * min(true_rate, rate_hz) / 2  # anti-aliasing below the lower Nyquist
        x = _sample(x, rate_hz, np.arange(k) / true_rate, jitter, cutoff)  # (N, C, K)
    eye, ones, zeros = np.eye(3), np.ones(3), np.zeros(3)
    acc = _errors(
        x[:, :3],
        inst.acc_gain if v.bias_gain else ones,
        inst.acc_misalignment if v.misalignment else eye,
        inst.acc_bias_g if v.bias_gain else zeros,
    )
    sensors = [(acc, inst.acc_noise_sd_g, inst.acc_range_g)]
    if c == 6:
        gyro = _errors(
            x[:, 3:],
            inst.gyro_gain if v.bias_gain else ones,
            inst.gyro_misalignment if v.misalignment else eye,
            inst.gyro_bias_rad_s if v.gyro_bias else zeros,
        )
        sensors.append((gyro, inst.gyro_noise_sd_rad_s, inst.gyro_range_rad_s))
    out = []
    for block, noise_sd, full_scale in sensors:
        if v.noise:
            block = block + np.float32(noise_sd) * rng.standard_normal(block.shape, np.float32)
        if v.saturation:
            block = np.clip(block, -full_scale, full_scale)
        if v.adc:
            step = np.float32(2 * full_scale / 2**inst.adc_bits)
            block = np.round(block / step) * step
        out.append(block)
    x = np.concatenate(out, axis=1)  # (N, C, K)
    if v.missing:
        x = _fill(x, _burst_mask(rng, n, x.shape[-1], nominal, inst), v.missing_fill)
    if resample:
        reported = np.arange(x.shape[-1]) / nominal
        back = sinc_matrix(reported, np.arange(t) / rate_hz, 0.8 * min(nominal, rate_hz) / 2)
        x = x @ back.T.astype(np.float32)  # (N, C, T)
    return x.astype(np.float32)
